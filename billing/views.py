"""The console's Billing page: thin over billing.selectors."""

from django.views.generic import TemplateView

from billing import selectors
from portal.console import OrganizationMixin
from portal.roles import Perm

# Two years of monthly invoices; the API pages through all of them.
INVOICES_SHOWN = 24


class BillingView(OrganizationMixin, TemplateView):
    template_name = "billing/billing.html"
    required_permission = Perm.BILLING_VIEW

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        upcoming = selectors.billing_upcoming(organization=self.organization)
        context.update(
            upcoming=upcoming,
            upcoming_lines=selectors.rated_lines(upcoming.rating),
            by_model=selectors.amounts_by_model(upcoming.rating),
            invoices=selectors.invoices_list(organization=self.organization)[:INVOICES_SHOWN],
        )
        return context
