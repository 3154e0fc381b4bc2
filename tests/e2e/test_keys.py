"""API keys in the browser: a developer creates, rotates and revokes a key."""

import json
import re

import pytest
import redis
from playwright.sync_api import expect

from keys import services
from keys.models import ApiKey
from portal.models import AuditEvent
from portal.roles import Role
from tests.e2e.conftest import log_in
from tests.factories import add_member, make_org, make_user

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

EDGE = "https://edge.acme.example"
SECRET = re.compile(r"^tg_live_[0-9A-Za-z]{38}$")


def _display(secret: str) -> str:
    return f"{secret[:12]}…{secret[-4:]}"


def test_developer_creates_rotates_and_revokes_a_key(new_context, live_server, settings):
    settings.EDGE_PUBLIC_URL = EDGE
    base = live_server.url
    organization = make_org(make_user("owner@example.com"), name="Acme AI")
    add_member(organization, Role.DEVELOPER, make_user("dev@example.com"))
    context = new_context()
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
    page = context.new_page()
    log_in(page, base, "dev@example.com")

    # Create.
    page.locator("aside.sidenav").get_by_role("link", name="API keys").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("API keys")
    expect(page.locator("#keys tbody")).to_have_text("No keys.")
    page.get_by_role("button", name="Create key").click()
    form = page.locator("#key-form")
    form.get_by_label("Name").fill("Search backend")
    form.get_by_label("Environment").select_option("live")
    form.get_by_label("Allowed models").fill("llama-3.1-8b-instruct\nqwen-*")
    form.get_by_label("Requests per minute").fill("600")
    form.get_by_label("Monthly budget (USD)").fill("25.50")
    form.get_by_role("button", name="Create key").click()

    expect(page.get_by_role("heading", level=1)).to_have_text("Your new key Search backend")
    expect(page.get_by_role("alert")).to_contain_text("It will not be shown again")
    secret_field = page.get_by_label("Secret key")
    expect(secret_field).to_have_attribute("readonly", "")
    secret = secret_field.input_value()
    assert SECRET.match(secret)
    copy = page.locator('button[data-copy="#secret"]')
    expect(copy).to_have_text("Copy")
    copy.click()
    expect(copy).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == secret
    expect(page.locator("#snippet-curl")).to_contain_text(f"curl {EDGE}/v1/chat/completions")
    expect(page.locator("#snippet-curl")).to_contain_text(f'-H "Authorization: Bearer {secret}"')
    expect(page.locator("#snippet-curl")).to_contain_text('"model": "llama-3.1-8b-instruct"')
    expect(page.locator("#snippet-python")).to_contain_text(
        f'client = OpenAI(base_url="{EDGE}/v1", api_key="{secret}")'
    )

    page.get_by_role("button", name=re.compile("back to API keys$")).click()
    expect(page.get_by_role("heading", level=1)).to_have_text("API keys")
    key = ApiKey.objects.for_organization(organization).get()
    assert key.secrets.get().secret_hash == services.secret_hash(secret)
    row = page.locator(f"#key-{key.public_id}")
    expect(row.locator("td.secrets")).to_have_text(_display(secret))
    expect(row).to_contain_text("llama-3.1-8b-instruct")
    expect(row).to_contain_text("rpm 600")
    expect(row).to_contain_text("of 25.50 USD")
    expect(row).to_contain_text("Active")
    assert secret not in page.content()

    # Rotate with one hour of grace.
    row.get_by_role("button", name="Rotate").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Rotate Search backend")
    page.get_by_label(re.compile(r"^\s*1 hour — the current secret stops at ")).check()
    page.get_by_role("button", name="Rotate key").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("New secret for Search backend")
    new_secret = page.get_by_label("Secret key").input_value()
    assert SECRET.match(new_secret) and new_secret != secret
    previous = key.secrets.get(secret_hash=services.secret_hash(secret))
    stops = f"{previous.expires_at:%Y-%m-%d %H:%M} UTC"
    expect(page.locator("#previous-stops")).to_have_text(stops)
    expect(page.locator("#snippet-curl")).to_contain_text(f"Bearer {new_secret}")

    page.get_by_role("button", name=re.compile("back to API keys$")).click()
    secrets_cell = page.locator(f"#key-{key.public_id} td.secrets")
    expect(secrets_cell).to_contain_text(_display(new_secret))
    expect(secrets_cell.locator(".previous-secret")).to_have_text(f"{_display(secret)} stops at {stops}")
    assert secret not in page.content() and new_secret not in page.content()

    # Revoke, after confirming.
    page.locator(f"#key-{key.public_id}").get_by_role("button", name="Revoke").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Revoke Search backend")
    key.refresh_from_db()
    assert key.revoked_at is None
    page.get_by_role("button", name="Revoke key").click()
    expect(page.get_by_role("status")).to_have_text(
        "The key Search backend was revoked. Requests with it now fail."
    )
    row = page.locator(f"#key-{key.public_id}")
    expect(row).to_contain_text("Revoked")
    expect(row.get_by_role("button")).to_have_count(0)
    key.refresh_from_db()
    assert key.status == ApiKey.Status.REVOKED
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        for plaintext in (secret, new_secret):
            record = json.loads(client.get(f"tg:key:{services.secret_hash(plaintext)}"))
            assert record["status"] == "revoked"
    finally:
        client.close()


def test_reload_after_creating_or_rotating_a_key_repeats_nothing_and_hides_the_secret(page, live_server):
    base = live_server.url
    organization = make_org(make_user("owner@example.com"), name="Acme AI")
    log_in(page, base, "owner@example.com")

    page.goto(f"{base}/o/{organization.slug}/keys/new/")
    form = page.locator("#key-form")
    form.get_by_label("Name").fill("Nightly batch")
    form.get_by_role("button", name="Create key").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Your new key Nightly batch")
    expect(page.get_by_role("status")).to_have_text("Created the key Nightly batch.")
    secret = page.get_by_label("Secret key").input_value()
    assert SECRET.match(secret)
    key = ApiKey.objects.for_organization(organization).get()
    assert key.secrets.get().secret_hash == services.secret_hash(secret)

    response = page.reload()
    assert response.status == 410
    expect(page.locator("#secret-gone")).to_contain_text(
        "This secret was shown once and is no longer available."
    )
    expect(page.get_by_label("Secret key")).to_have_count(0)
    assert secret not in page.content()
    assert ApiKey.objects.for_organization(organization).count() == 1

    page.goto(f"{base}/o/{organization.slug}/keys/{key.public_id}/rotate/")
    page.get_by_label(re.compile(r"^\s*Immediately")).check()
    page.get_by_role("button", name="Rotate key").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("New secret for Nightly batch")
    rotated = page.get_by_label("Secret key").input_value()
    assert SECRET.match(rotated) and rotated != secret

    response = page.reload()
    assert response.status == 410
    expect(page.locator("#secret-gone")).to_contain_text("rotate the key Nightly batch to get a new secret")
    assert rotated not in page.content()
    assert [row.secret_hash for row in key.secrets.live()] == [services.secret_hash(rotated)]
    assert AuditEvent.objects.filter(organization=organization, action="key.rotated").count() == 1
