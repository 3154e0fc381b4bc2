"""The console's page for one API key, through the Django test client on real Postgres."""

import html
import re
import uuid
from datetime import UTC, date, datetime, timedelta

import pytest
from django.urls import reverse

from billing.services import model_price_set
from keys import services
from keys.models import ApiKey
from portal.audit import Actor
from portal.roles import ROLE_PERMISSIONS, Perm, Role
from tests.factories import add_member, make_org, make_user
from tests.portal.test_console_access import _without_csrf
from tests.portal.test_security_headers import inline_code
from usage.ingest import Event, usage_events_ingest
from usage.models import UsageRollup

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 15, 12, 0, tzinfo=UTC)


@pytest.fixture
def clock(time_machine):
    time_machine.move_to(NOW, tick=False)
    return NOW


def _rollup(key, hour, *, input_tokens, requests=1, errors=0, period=date(2026, 11, 1)):
    UsageRollup.unscoped.create(
        organization=key.organization,
        key=key,
        model="m",
        hour=hour,
        billed_period=period,
        requests=requests,
        errors=errors,
        input_tokens=input_tokens,
    )


@pytest.fixture
def key(clock, organization, actor):
    """A budgeted key, rotated once, with usage this month, last month and on another key."""
    key, _secret = services.api_key_create(
        actor=actor,
        organization=organization,
        name="Search backend",
        environment="test",
        allowed_models=["gpt-4o", "llama-*"],
        rpm_limit=60,
        tpm_limit=90000,
        concurrency_limit=4,
        budget_monthly_minor=500,
    )
    services.api_key_update(actor=actor, key=key, rpm_limit=120)
    model_price_set(
        actor=Actor.system(),
        model="m",
        input_per_mtok_minor="100",
        cached_input_per_mtok_minor="10",
        output_per_mtok_minor="1000",
        effective_from=datetime(2026, 10, 1, tzinfo=UTC),
    )
    # 3,000,000 × 100 per million = 300 cents, yesterday; 1,000,000 = 100 cents on the 2nd.
    _rollup(key, NOW - timedelta(days=1, hours=2), input_tokens=3_000_000, requests=7, errors=2)
    _rollup(key, datetime(2026, 11, 2, 9, tzinfo=UTC), input_tokens=1_000_000)
    # Last month's usage and another key's are not this key's spend this month.
    _rollup(key, datetime(2026, 10, 31, 9, tzinfo=UTC), input_tokens=10**8, period=date(2026, 10, 1))
    other, _ = services.api_key_create(actor=actor, organization=organization, name="Batch")
    _rollup(other, NOW - timedelta(hours=3), input_tokens=10**8)
    services.api_key_revoke(actor=actor, key=other)
    return key


def _page(client, organization, key_id):
    return client.get(reverse("org-key", args=[organization.slug, key_id]))


def test_the_page_shows_settings_spend_against_budget_and_daily_usage(client, owner, organization, key):
    client.force_login(owner)

    response = _page(client, organization, key.public_id)

    assert response.status_code == 200
    body = response.content.decode()
    assert "<h1>Search backend" in body
    assert "<dd>Test</dd>" in body
    assert '<code class="nowrap">gpt-4o</code> <code class="nowrap">llama-*</code>' in body
    assert "<dd>rpm 120 · tpm 90000 · concurrency 4</dd>" in body
    # 300 + 100 cents rated this month, of a 500-cent budget.
    assert "<h2>Spend in November 2026</h2>" in body
    assert '<strong data-spend-minor="400">4.00 USD</strong>' in body
    assert "of a 5.00 USD monthly budget (80%) · alert at 80%" in body
    assert '<progress id="key-budget-bar" value="400" max="500"' in body
    rows = re.findall(r"<tr><td class=\"nowrap\">(\d{4}-\d\d-\d\d)</td>(.*?)</tr>", body)
    assert [day for day, _ in rows] == [f"2026-11-{day:02d}" for day in range(9, 16)]
    cells = dict((day, re.findall(r'<td class="number">([^<]*)</td>', rest)) for day, rest in rows)
    assert cells["2026-11-14"] == ["7", "2", "3,000,000", "0", "3.00 USD"]
    assert cells["2026-11-15"] == ["0", "0", "0", "0", "0.00 USD"]
    assert 'data-source="key-usage-chart"' in body
    assert inline_code(body) == []


def test_spend_over_the_budget_fills_the_bar_and_says_by_how_much(client, owner, organization, key, actor):
    services.api_key_update(actor=actor, key=key, budget_monthly_minor=200)
    client.force_login(owner)

    body = _page(client, organization, key.public_id).content.decode()

    assert "of a 2.00 USD monthly budget (200%)" in body
    assert '<progress id="key-budget-bar" value="200" max="200"' in body


def test_secrets_rotations_and_audit_events_are_the_keys_own(client, owner, organization, key, actor):
    first = key.secrets.get()
    services.api_key_rotate(actor=actor, key=key, grace_period=timedelta(hours=1))
    second = key.secrets.exclude(pk=first.pk).get()
    client.force_login(owner)

    body = _page(client, organization, key.public_id).content.decode()

    secrets = body.split('id="key-secrets"')[1].split("</table>")[0]
    assert re.findall(r"<code class=\"nowrap\">([^<]+)</code>", secrets) == [
        f"{second.prefix}…{second.last4}",
        f"{first.prefix}…{first.last4}",
    ]
    assert '<td class="nowrap">2026-11-15 13:00</td>' in secrets  # the previous secret's grace end
    assert secrets.count("<td>Live</td>") == 2
    rotations = body.split('id="key-rotations"')[1].split("</table>")[0]
    assert f'<code class="nowrap">{second}</code>' in rotations
    assert f'<code class="nowrap">{first}</code>' in rotations
    assert '<td class="nowrap">2026-11-15 13:00</td>' in rotations  # when the previous secret stops
    audit = body.split('id="key-audit"')[1].split("</table>")[0]
    assert re.findall(r"<td><code>([^<]+)</code></td>", audit) == [
        "key.rotated",
        "key.updated",
        "key.created",
    ]


def test_managers_get_edit_rotate_and_revoke_links(client, owner, organization, key):
    client.force_login(owner)

    body = _page(client, organization, key.public_id).content.decode()

    base = f"/o/{organization.slug}/keys/{key.public_id}"
    for action in ("edit", "rotate", "revoke"):
        assert f'href="{base}/{action}/"' in body
    assert (
        f'href="/o/{organization.slug}/usage/?start=2026-11-09&amp;end=2026-11-15&amp;key={key.public_id}"'
        in body
    )


def test_the_key_list_links_to_each_keys_page(client, owner, organization, key):
    client.force_login(owner)

    body = client.get(reverse("org-keys", args=[organization.slug])).content.decode()

    assert f'<a href="/o/{organization.slug}/keys/{key.public_id}/">Search backend</a>' in body


@pytest.mark.parametrize("role", list(Role))
def test_each_role_opens_the_page_only_with_keys_view(client, owner, organization, key, role):
    client.force_login(owner if role == Role.OWNER else add_member(organization, role))

    response = _page(client, organization, key.public_id)

    allowed = Perm.KEYS_VIEW in ROLE_PERMISSIONS[role]
    assert response.status_code == (200 if allowed else 403)
    body = response.content.decode()
    manage = Perm.KEYS_MANAGE in ROLE_PERMISSIONS[role]
    assert (f"/keys/{key.public_id}/rotate/" in body) == (allowed and manage)


def test_another_organizations_key_answers_404_like_a_missing_one(client, organization, key):
    stranger = make_user("stranger@example.com")
    elsewhere = make_org(stranger, name="Globex")
    client.force_login(stranger)

    foreign = _page(client, elsewhere, key.public_id)
    missing = _page(client, elsewhere, "key_doesnotexist")

    assert foreign.status_code == missing.status_code == 404
    assert _without_csrf(foreign.content) == _without_csrf(missing.content)


def _event(key, *, ended, latency_ms, status=200, input_tokens=0, output_tokens=0):
    return Event(
        event_id=uuid.uuid4(),
        occurred_at=ended,
        organization_id=key.organization_id,
        key_id=key.pk,
        model="m",
        endpoint="chat.completions",
        status=status,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cached_tokens=0,
        estimated=False,
        cost_micro_minor=0,
        latency_ms=latency_ms,
        ttft_ms=None,
        request_id=f"req_{uuid.uuid4().hex}",
        source="edge",
    )


def _limits(body: str) -> dict[str, tuple[str, str]]:
    """Return each limit's figures and its bar, as the page shows them."""
    section = body.split('id="key-limits"')[1].split("<h2>")[0]
    found = {}
    for name, block in re.findall(r'id="key-limit-(\w+)">(.*?)</div>', section, re.S):
        figures = re.search(r"<strong>(.*?)</p>", block, re.S).group(1)
        bar = re.search(r"<progress [^>]*>", block)
        found[name] = (" ".join(re.sub(r"<[^>]+>", "", figures).split()), bar.group(0) if bar else "")
    return found


def test_the_last_minutes_requests_tokens_and_peak_concurrency_show_against_the_limits(
    client, owner, organization, key
):
    second = timedelta(seconds=1)
    other = ApiKey.unscoped.get(organization=organization, name="Batch")
    usage_events_ingest(
        [
            # Three requests in flight at once between NOW-30 s and NOW-28 s.
            _event(key, ended=NOW - 28 * second, latency_ms=5000, input_tokens=1000, output_tokens=500),
            _event(key, ended=NOW - 27 * second, latency_ms=4000, input_tokens=2000, output_tokens=0),
            _event(key, ended=NOW - 20 * second, latency_ms=10000, input_tokens=100, output_tokens=50),
            # Starts as the first one ends (no overlap): still three in flight, not four.
            _event(key, ended=NOW - 25 * second, latency_ms=3000, input_tokens=30, output_tokens=20),
            # A refusal moved no counter; a request that ended more than a minute ago is not load.
            _event(key, ended=NOW - 10 * second, latency_ms=1, status=429),
            _event(key, ended=NOW - 61 * second, latency_ms=500, input_tokens=10**6),
            # Another key's load is its own.
            _event(other, ended=NOW - second, latency_ms=50000, input_tokens=10**6),
        ]
    )
    client.force_login(owner)

    body = _page(client, organization, key.public_id).content.decode()

    assert _limits(body) == {
        "rpm": (
            "4 / 120 (3%)",
            '<progress value="4" max="120" aria-label="Requests per minute: share of the limit">',
        ),
        "tpm": (
            "3,700 / 90,000 (4%)",
            '<progress value="3700" max="90000" aria-label="Tokens per minute: share of the limit">',
        ),
        "concurrency": (
            "3 / 4 (75%)",
            '<progress value="3" max="4" aria-label="Concurrent requests (peak): share of the limit">',
        ),
    }


def test_load_past_a_limit_fills_its_bar_and_a_key_without_limits_shows_no_bars(
    client, owner, organization, key, actor
):
    services.api_key_update(actor=actor, key=key, rpm_limit=2, tpm_limit=None, concurrency_limit=None)
    usage_events_ingest(
        [_event(key, ended=NOW - timedelta(seconds=n), latency_ms=10, input_tokens=7) for n in range(5)]
    )
    client.force_login(owner)

    body = _page(client, organization, key.public_id).content.decode()

    assert _limits(body) == {
        "rpm": (
            "5 / 2 (250%)",
            '<progress value="2" max="2" aria-label="Requests per minute: share of the limit">',
        ),
        "tpm": ("35 / no limit", ""),
        "concurrency": ("1 / no limit", ""),
    }


def test_the_snippets_call_the_edge_with_a_placeholder_never_the_secret(
    client, owner, organization, actor, settings
):
    settings.EDGE_PUBLIC_URL = "https://edge.example.test"
    key, secret = services.api_key_create(
        actor=actor, organization=organization, name="Chat", allowed_models=["llama-*", "llama-3.1-8b"]
    )
    client.force_login(owner)

    body = _page(client, organization, key.public_id).content.decode()

    assert secret not in body
    live = key.secrets.get()
    assert (
        '<p id="key-snippets-help">Replace <code>YOUR_SECRET_KEY</code> with the key\'s secret '
        f'(<code class="nowrap">{live.prefix}…{live.last4}</code>): it was shown once, when the key was '
        "created or rotated.</p>"
    ) in html.unescape(body)
    code = {
        name: html.unescape(re.search(rf'<code id="snippet-{name}">(.*?)</code>', body, re.S).group(1))
        for name in ("curl", "python", "node")
    }
    assert code["curl"] == (
        "curl https://edge.example.test/v1/chat/completions \\\n"
        '  -H "Authorization: Bearer YOUR_SECRET_KEY" \\\n'
        '  -H "Content-Type: application/json" \\\n'
        '  -d \'{"model": "llama-3.1-8b", "messages": [{"role": "user", "content": "Hello"}]}\''
    )
    assert (
        'client = OpenAI(base_url="https://edge.example.test/v1", api_key="YOUR_SECRET_KEY")'
        in code["python"]
    )
    assert code["node"] == (
        'import OpenAI from "openai";\n\n'
        'const client = new OpenAI({ baseURL: "https://edge.example.test/v1", apiKey: "YOUR_SECRET_KEY" });\n'
        "const response = await client.chat.completions.create({\n"
        '  model: "llama-3.1-8b",\n'
        '  messages: [{ role: "user", content: "Hello" }],\n'
        "});\n"
        "console.log(response.choices[0].message.content);"
    )
