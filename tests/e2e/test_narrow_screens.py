"""Console tables on a phone (390 px) and the audit log at 1280 px: the page never scrolls
sideways; a wide table scrolls inside its own box, and its last buttons stay reachable."""

from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from keys import services as key_services
from portal.audit import Actor, audit_record
from tests.e2e.conftest import log_in
from tests.factories import make_org, make_user
from usage.models import UsageRollup

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

FITS = "document.documentElement.scrollWidth <= window.innerWidth"
MODELS = ["llama-3.1-8b-instruct", "qwen-2.5-72b-instruct", "mistral-large-2407"]


@pytest.fixture
def acme():
    """Acme AI with a key that allows several long model names and has this hour's usage."""
    owner = make_user("owner@example.com")
    organization = make_org(owner, name="Acme AI")
    key, _secret = key_services.api_key_create(
        actor=Actor(user=owner),
        organization=organization,
        name="Search backend for the customer-facing assistant",
        allowed_models=MODELS,
        rpm_limit=600,
    )
    hour = timezone.now().replace(minute=0, second=0, microsecond=0)
    UsageRollup.unscoped.create(
        organization=organization,
        key=key,
        model=MODELS[0],
        hour=hour - timedelta(hours=1),
        billed_period=hour.date().replace(day=1),
        requests=12,
        input_tokens=3_400,
        output_tokens=1_200,
    )
    return organization, key


def test_at_390px_the_keys_page_fits_and_revoke_is_reachable(new_context, live_server, acme):
    organization, key = acme
    page = new_context().new_page()
    page.set_viewport_size({"width": 390, "height": 844})
    log_in(page, live_server.url, "owner@example.com")

    page.goto(f"{live_server.url}/o/{organization.slug}/keys/")
    expect(page.locator(f"#key-{key.public_id}")).to_be_visible()
    assert page.evaluate(FITS)
    box = page.locator("#keys").locator("xpath=..")
    assert page.evaluate("(box) => box.scrollWidth > box.clientWidth", box.element_handle())
    revoke = page.locator(f"#key-{key.public_id}").get_by_role("button", name="Revoke")
    revoke.scroll_into_view_if_needed()
    assert page.evaluate(FITS)
    # Destructive actions are red (the .danger class), not the neutral contrast outline.
    expect(revoke).to_have_css("color", "rgb(198, 40, 40)")
    revoke.click()
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Revoke {key.name}")


def test_at_390px_the_dashboard_fits_and_its_top_keys_table_scrolls_in_its_box(
    new_context, live_server, acme
):
    organization, key = acme
    page = new_context().new_page()
    page.set_viewport_size({"width": 390, "height": 844})
    log_in(page, live_server.url, "owner@example.com")

    page.goto(f"{live_server.url}/o/{organization.slug}/")
    top_keys = page.locator("#top-keys")
    expect(top_keys).to_contain_text(key.name)
    assert page.evaluate(FITS)
    last_cell = top_keys.locator("tbody tr").first.locator("td").last
    last_cell.scroll_into_view_if_needed()
    assert page.evaluate(
        "(cell) => { const r = cell.getBoundingClientRect(); return r.left >= 0 && r.right <= window.innerWidth; }",
        last_cell.element_handle(),
    )


def test_at_1280px_long_audit_details_wrap_inside_the_table(new_context, live_server, acme):
    organization, _key = acme
    audit_record(
        actor=Actor.system(),
        organization=organization,
        action="key.updated",
        metadata={"allowed_models": ",".join(MODELS * 6), "note": "x" * 300},
    )
    page = new_context().new_page()
    log_in(page, live_server.url, "owner@example.com")

    page.goto(f"{live_server.url}/o/{organization.slug}/audit/")
    expect(page.locator("main tbody tr").first.locator("td").last).to_contain_text("allowed_models")
    assert page.evaluate(FITS)
    box = page.locator("main table").locator("xpath=..")
    assert page.evaluate("(box) => box.scrollWidth <= box.clientWidth", box.element_handle())
