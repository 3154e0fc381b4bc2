"""billing_reconcile: invoices == a fresh rating == Stripe, and a loud report when not."""

import logging
from io import StringIO

import pytest
from django.core.management import call_command
from prometheus_client import REGISTRY

from billing import stripe_adapter
from billing.models import InvoiceLine, ModelPrice
from billing.services import invoice_push
from billing.tasks import reconcile_period
from tests.billing.fixtures import NOV
from tests.billing.test_stripe_push import Crash, crash_after
from usage.models import ClosedPeriod

pytestmark = pytest.mark.django_db


def reconcile(*args) -> tuple[int, list[str]]:
    out = StringIO()
    try:
        call_command("billing_reconcile", *args, stdout=out)
        code = 0
    except SystemExit as exit:
        code = exit.code
    return code, out.getvalue().splitlines()


@pytest.fixture
def pushed_month(billed_month, stripe_customer):
    organization, owner, invoice = billed_month
    stripe_customer(organization, owner)
    invoice_push(invoice=invoice)
    ClosedPeriod.objects.create(period=NOV)
    return organization, invoice


def test_a_clean_month_passes(pushed_month):
    organization, _invoice = pushed_month

    assert reconcile() == (0, ["billing_reconcile 2026-11: 1 invoice(s), 0 difference(s)"])
    assert reconcile("--period", "2026-11", "--organization", organization.slug) == (
        0,
        ["billing_reconcile 2026-11: 1 invoice(s), 0 difference(s)"],
    )


def test_a_credit_line_counts_in_the_total_but_not_against_the_rating(billed_month, stripe_settings):
    organization, _owner, invoice = billed_month
    InvoiceLine.objects.create(
        invoice=invoice, position=5, kind="credit", quantity=1, amount_minor=-48, description="Goodwill"
    )
    invoice.total_minor = 600
    invoice.save(update_fields=["total_minor"])

    assert reconcile("--period", "2026-11") == (
        0,
        ["billing_reconcile 2026-11: 1 invoice(s), 0 difference(s)"],
    )


def test_a_line_changed_behind_its_back_is_reported(pushed_month):
    organization, invoice = pushed_month
    line = invoice.lines.get(position=4)
    InvoiceLine.objects.filter(pk=line.pk).update(amount_minor=124)

    assert reconcile() == (
        1,
        [
            f"{organization.slug} (invoice {invoice.pk}) rating: invoice has usage n input × 1,234,567 = 1.24 USD, "
            "the rating has not",
            f"{organization.slug} (invoice {invoice.pk}) rating: rating has usage n input × 1,234,567 = 1.23 USD, "
            "the invoice has not",
            f"{organization.slug} (invoice {invoice.pk}) total: total 6.48 USD but the lines sum to 6.49 USD",
            f"{organization.slug} (invoice {invoice.pk}) stripe_lines: line {line.pk}: Stripe 1.23 USD, here 1.24 USD",
            "billing_reconcile 2026-11: 1 invoice(s), 4 difference(s)",
        ],
    )


def test_a_price_changed_behind_its_back_is_reported(pushed_month):
    organization, invoice = pushed_month
    ModelPrice.objects.filter(model="n").update(input_per_mtok_minor=200)

    assert reconcile() == (
        1,
        [
            f"{organization.slug} (invoice {invoice.pk}) rating: invoice has usage n input × 1,234,567 = 1.23 USD, "
            "the rating has not",
            f"{organization.slug} (invoice {invoice.pk}) rating: rating has usage n input × 1,234,567 = 2.47 USD, "
            "the invoice has not",
            "billing_reconcile 2026-11: 1 invoice(s), 2 difference(s)",
        ],
    )


def test_a_stripe_total_changed_behind_its_back_is_reported_and_logged(
    billed_month, stripe_customer, stripe_api, monkeypatch, caplog
):
    organization, owner, invoice = billed_month
    customer = stripe_customer(organization, owner)
    crash_after(monkeypatch, "invoice_retrieve")  # the lines are on Stripe's draft, nothing finalized
    with pytest.raises(Crash):
        invoice_push(invoice=invoice)
    monkeypatch.undo()
    invoice.refresh_from_db()
    stripe_api.v1.invoice_items.create(
        params={
            "customer": customer,
            "invoice": invoice.stripe_invoice_id,
            "amount": 1000,
            "currency": "usd",
            "description": "Added in the dashboard",
        }
    )
    expected = [
        ("stripe_total", "Stripe 16.48 USD, here 6.48 USD"),
        ("stripe_lines", "Stripe has a line not on this invoice: 'Added in the dashboard' 10.00 USD"),
    ]

    assert reconcile("--period", "2026-11", "--organization", organization.slug) == (
        1,
        [f"{organization.slug} (invoice {invoice.pk}) {what}: {detail}" for what, detail in expected]
        + ["billing_reconcile 2026-11: 1 invoice(s), 2 difference(s)"],
    )

    before = {what: _differences_counted(what) for what, _detail in expected}
    with caplog.at_level(logging.ERROR, logger="tollgate.billing"):
        assert reconcile_period.apply(args=["2026-11-01"]).get() == 2
    assert [
        (record.levelname, record.getMessage(), record.organization, record.what, record.detail)
        for record in caplog.records
    ] == [
        ("ERROR", "billing reconcile difference", organization.slug, what, detail)
        for what, detail in expected
    ]
    assert {what: _differences_counted(what) - before[what] for what in before} == {
        "stripe_total": 1,
        "stripe_lines": 1,
    }


def _differences_counted(what: str) -> float:
    return REGISTRY.get_sample_value("tollgate_billing_reconcile_differences_total", {"what": what}) or 0


def test_an_invoice_whose_status_differs_from_stripes_is_reported(pushed_month):
    organization, invoice = pushed_month
    invoice.status = "open"
    invoice.save(update_fields=["status"])

    assert reconcile() == (
        1,
        [
            f"{organization.slug} (invoice {invoice.pk}) stripe_status: Stripe paid, here open",
            "billing_reconcile 2026-11: 1 invoice(s), 1 difference(s)",
        ],
    )


def test_usage_without_an_invoice_is_reported(billed_month, stripe_settings):
    organization, _owner, invoice = billed_month
    invoice.delete()

    assert reconcile("--period", "2026-11") == (
        1,
        [
            f"{organization.slug} (no invoice) missing_invoice: usage billed in the period but no invoice",
            "billing_reconcile 2026-11: 0 invoice(s), 1 difference(s)",
        ],
    )


def test_bad_arguments_are_refused(db):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="No period is closed yet; name one with --period YYYY-MM."):
        call_command("billing_reconcile")
    with pytest.raises(CommandError, match="--period must be YYYY-MM, got '2026-13'"):
        call_command("billing_reconcile", "--period", "2026-13")
    with pytest.raises(CommandError, match="No organization 'nope'."):
        call_command("billing_reconcile", "--period", "2026-11", "--organization", "nope")


def test_stripe_is_the_only_module_importing_stripe():
    """Every other module reaches Stripe through the adapter."""
    from pathlib import Path

    root = Path(stripe_adapter.__file__).resolve().parents[1]
    importers = sorted(
        str(path.relative_to(root))
        for package in ("portal", "keys", "usage", "billing", "edge")
        for path in (root / package).rglob("*.py")
        if any(line.startswith(("import stripe", "from stripe")) for line in path.read_text().splitlines())
    )
    assert importers == ["billing/stripe_adapter.py"]
