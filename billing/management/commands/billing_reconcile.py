from datetime import date

from django.core.management.base import BaseCommand, CommandError

from billing.errors import BillingError
from billing.reconcile import billing_reconcile, last_closed_period
from portal.models import Organization


def _month(value: str) -> date:
    try:
        year, month = value.split("-")
        return date(int(year), int(month), 1)
    except ValueError:
        raise CommandError(f"--period must be YYYY-MM, got {value!r}") from None


class Command(BaseCommand):
    help = (
        "Check a period's invoices: lines == a fresh rating of the rollups, total == sum of lines, "
        "and total, status and lines == Stripe's. Exit 1 on any difference."
    )

    def add_arguments(self, parser):
        parser.add_argument("--period", help="YYYY-MM (default: the last closed period)")
        parser.add_argument("--organization", metavar="SLUG", help="only this organization")

    def handle(self, *args, **options):
        period = _month(options["period"]) if options["period"] else last_closed_period()
        if period is None:
            raise CommandError("No period is closed yet; name one with --period YYYY-MM.")
        organization_ids = None
        if options["organization"]:
            organization = Organization.objects.filter(slug=options["organization"]).first()
            if organization is None:
                raise CommandError(f"No organization {options['organization']!r}.")
            organization_ids = [organization.pk]
        try:
            checked, differences = billing_reconcile(period=period, organization_ids=organization_ids)
        except BillingError as error:
            raise CommandError(f"Stripe could not be checked: {error.message}") from None
        for d in differences:
            invoice = f"invoice {d.invoice_id}" if d.invoice_id else "no invoice"
            self.stdout.write(f"{d.organization_slug} ({invoice}) {d.what}: {d.detail}")
        self.stdout.write(
            f"billing_reconcile {period:%Y-%m}: {checked} invoice(s), {len(differences)} difference(s)"
        )
        if differences:
            raise SystemExit(1)
