"""Billing's emails to an organization: to its owners and billing members, after the commit."""

from django.conf import settings
from django.urls import reverse

from billing.currency import format_minor
from billing.models import Invoice
from portal.emails import email_send
from portal.models import Membership, Organization
from portal.roles import Role


def billing_url(organization: Organization) -> str:
    """Return the absolute address of the organization's Billing page (where it pays)."""
    return settings.SITE_URL + reverse("org-billing", args=[organization.slug])


def billing_recipients(organization: Organization) -> list[str]:
    """Return the addresses of the organization's owners and billing members."""
    return sorted(
        Membership.unscoped.filter(organization=organization, role__in=[Role.OWNER, Role.BILLING])
        .values_list("user__email", flat=True)
        .distinct()
    )


def billing_email_send(
    *, organization: Organization, template: str, invoice: Invoice | None = None, **context
) -> None:
    """Send ``emails/<template>_*`` to the organization's billing recipients once the write commits."""
    recipients = billing_recipients(organization)
    if not recipients:
        return
    if invoice is not None:
        context.update(invoice=invoice, total=format_minor(invoice.total_minor, invoice.currency))
    email_send(
        to=recipients,
        template=template,
        context={"organization": organization, "billing_url": billing_url(organization), **context},
    )
