"""The console's Billing page (thin over billing.selectors) and Stripe's webhook endpoint."""

from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from django.views.generic import TemplateView

from billing import selectors
from billing.errors import BillingError
from billing.webhooks import webhook_event_receive
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


@csrf_exempt
@require_POST
def stripe_webhook(request):
    """Take one Stripe delivery: 200 once its event is stored (or was already), else a JSON error.

    Stripe signs the raw body, so it is read as bytes and never parsed before it is verified.
    """
    try:
        _event, new = webhook_event_receive(
            payload=request.body, signature=request.headers.get("Stripe-Signature", "")
        )
    except BillingError as error:
        return JsonResponse({"error": error.code, "message": error.message}, status=error.status)
    return JsonResponse({"received": True, "duplicate": not new})
