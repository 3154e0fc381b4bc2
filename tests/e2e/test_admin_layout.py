"""The Django admin at 1280 px: the key and audit lists and an invoice's page fit the window;
long values are cut with the whole value in a tooltip; voiding an invoice is red and asks first."""

from datetime import date
from pathlib import Path

import pytest
from django.conf import settings
from playwright.sync_api import expect

from billing.closing import invoice_store
from billing.models import Invoice, Plan
from billing.rating import Line, Rating
from keys import services as key_services
from portal.audit import Actor, audit_record
from tests.factories import PASSWORD, make_org, make_user

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

FITS = "document.documentElement.scrollWidth <= window.innerWidth"
# The change list's columns fit its box too: nothing hides behind its scroll bar at 1280 px.
RESULTS_FIT = (
    "(box => box.scrollWidth <= box.clientWidth)(document.querySelector('#changelist-form .results'))"
)
SCREENSHOTS = Path(settings.BASE_DIR) / ".run" / "screenshots" / "admin"
LONG_NAME = "Search backend for the customer-facing assistant in the European region, batch and online"
USER_AGENT = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0"
)


@pytest.fixture
def admin_page(new_context, live_server):
    staff = make_user("staff@example.com")
    staff.is_staff = staff.is_superuser = True
    staff.save()
    page = new_context().new_page()
    problems: list[str] = []
    page.on("console", lambda message: message.type == "error" and problems.append(message.text))
    page.on("requestfailed", lambda request: problems.append(f"failed: {request.url}"))
    page.goto(f"{live_server.url}/admin/login/?next=/admin/")
    page.locator("#id_username").fill("staff@example.com")
    page.locator("#id_password").fill(PASSWORD)
    page.locator("#login-form [type=submit]").click()
    expect(page).to_have_url(f"{live_server.url}/admin/")
    page.problems = problems
    return page


@pytest.fixture
def busy_organization():
    owner = make_user("owner-with-a-rather-long-address@customer-engineering.example.com")
    organization = make_org(owner, name="Acme Artificial Intelligence Research and Deployment GmbH & Co. KG")
    for number in range(3):
        key_services.api_key_create(
            actor=Actor(user=owner, ip="203.0.113.77", user_agent=USER_AGENT),
            organization=organization,
            name=f"{LONG_NAME} {number}",
        )
    audit_record(
        actor=Actor(user=owner, ip="2001:db8:85a3::8a2e:370:7334", user_agent=USER_AGENT),
        organization=organization,
        action="organization.limits_changed",
        target=organization,
        metadata={"note": "x" * 400},
    )
    return organization


def _shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / f"{name}-desktop.png", full_page=True)


def test_the_admin_key_list_fits_at_1280px_and_cuts_long_names_with_a_tooltip(
    admin_page, live_server, busy_organization
):
    admin_page.goto(f"{live_server.url}/admin/keys/apikey/")
    rows = admin_page.locator("#result_list tbody tr")
    expect(rows).to_have_count(3)
    _shot(admin_page, "key-list")
    assert admin_page.evaluate(FITS)
    assert admin_page.evaluate(RESULTS_FIT)
    name = rows.first.locator("td.field-short_name span")
    expect(name).to_have_attribute("title", f"{LONG_NAME} 2")
    expect(name).to_have_text(f"{LONG_NAME[:19]}…")
    expect(rows.first.locator("td.field-organization_name span")).to_have_attribute(
        "title", f"{busy_organization.name} ({busy_organization.slug})"
    )
    assert admin_page.problems == []


def test_the_admin_audit_list_fits_at_1280px(admin_page, live_server, busy_organization):
    admin_page.goto(f"{live_server.url}/admin/portal/auditevent/")
    rows = admin_page.locator("#result_list tbody tr")
    expect(rows).to_have_count(5)
    _shot(admin_page, "audit-list")
    assert admin_page.evaluate(FITS)
    assert admin_page.evaluate(RESULTS_FIT)
    expect(admin_page.locator("#result_list thead th")).to_have_text(
        ["Time (UTC)", "Action", "Actor", "Organization", "Target", "IP address"]
    )
    first = rows.first
    expect(first.locator("td.field-action_name span")).to_have_attribute(
        "title", "organization.limits_changed"
    )
    expect(first.locator("td.field-actor_name span")).to_have_attribute(
        "title", "owner-with-a-rather-long-address@customer-engineering.example.com"
    )
    expect(first.locator("td.field-ip span")).to_have_attribute("title", "2001:db8:85a3::8a2e:370:7334")
    assert admin_page.problems == []


def test_the_invoice_page_fits_at_1280px_and_void_is_red_and_asks_first(
    admin_page, live_server, busy_organization
):
    invoice = invoice_store(
        organization_id=busy_organization.pk,
        period=date(2026, 10, 1),
        plan=Plan.objects.get(is_default=True),
        rating=Rating((Line("fee", "", "", 1, None, 900, "Standard plan, October 2026"),)),
    )
    Invoice.objects.filter(pk=invoice.pk).update(status=Invoice.Status.OPEN)  # never reached Stripe
    admin_page.goto(f"{live_server.url}/admin/billing/invoice/{invoice.pk}/change/")
    void = admin_page.get_by_role("button", name="Void invoice")
    expect(void).to_have_css("background-color", "rgb(186, 33, 33)")
    _shot(admin_page, "invoice-change")
    assert admin_page.evaluate(FITS)

    questions: list[str] = []

    def answer(dialog, accept: bool):
        questions.append(dialog.message)
        dialog.accept() if accept else dialog.dismiss()

    admin_page.once("dialog", lambda dialog: answer(dialog, False))
    void.click()
    expect(void).to_be_visible()
    assert Invoice.objects.get(pk=invoice.pk).status == Invoice.Status.OPEN

    admin_page.once("dialog", lambda dialog: answer(dialog, True))
    void.click()
    expect(admin_page).to_have_url(f"{live_server.url}/admin/billing/invoice/")
    expect(admin_page.locator(".messagelist")).to_have_text("Voided: 1 invoice(s).")
    assert (
        questions
        == [f"Void {invoice.public_id} here and in Stripe? A voided invoice cannot be reopened."] * 2
    )
    assert Invoice.objects.get(pk=invoice.pk).status == Invoice.Status.VOID
    assert admin_page.problems == []


def test_voiding_from_the_invoice_list_asks_first(admin_page, live_server, busy_organization):
    invoice = invoice_store(
        organization_id=busy_organization.pk,
        period=date(2026, 10, 1),
        plan=Plan.objects.get(is_default=True),
        rating=Rating((Line("fee", "", "", 1, None, 900, "Standard plan, October 2026"),)),
    )
    Invoice.objects.filter(pk=invoice.pk).update(status=Invoice.Status.OPEN)
    admin_page.goto(f"{live_server.url}/admin/billing/invoice/")
    admin_page.locator("#result_list tbody input.action-select").check()
    admin_page.locator('select[name="action"]').select_option("void")
    questions: list[str] = []
    admin_page.once("dialog", lambda dialog: (questions.append(dialog.message), dialog.dismiss()))
    admin_page.locator('button[name="index"]').click()
    expect(admin_page.locator("#result_list tbody tr")).to_have_count(1)
    assert questions == [
        "Void the selected invoices here and in Stripe? A voided invoice cannot be reopened."
    ]
    assert Invoice.objects.get(pk=invoice.pk).status == Invoice.Status.OPEN
