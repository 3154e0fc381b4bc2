"""The console's Billing page and its forms (thin over billing.selectors and billing.services),
and Stripe's webhook endpoint."""

from django.conf import settings
from django.contrib import messages
from django.http import Http404, JsonResponse
from django.shortcuts import redirect
from django.views import View
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from django.views.generic import TemplateView

from billing import selectors, services
from billing.errors import BillingError
from billing.forms import BillingDetailsForm, SetupIntentForm
from billing.webhooks import webhook_event_receive
from portal.audit import Actor
from portal.console import OrganizationMixin
from portal.errors import DomainError
from portal.roles import Perm

# Two years of monthly invoices; the API pages through all of them.
INVOICES_SHOWN = 24


class BillingView(OrganizationMixin, TemplateView):
    template_name = "billing/billing.html"
    required_permission = Perm.BILLING_VIEW

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        upcoming = selectors.billing_upcoming(organization=self.organization)
        try:
            cards, cards_error = selectors.cards_list(organization=self.organization), ""
        except BillingError as error:
            # The rest of the page does not need Stripe: show it, and say what is missing.
            cards, cards_error = [], error.message
        details = selectors.billing_details_get(organization=self.organization)
        context.update(
            upcoming=upcoming,
            upcoming_lines=selectors.rated_lines(upcoming.rating),
            by_model=selectors.amounts_by_model(upcoming.rating),
            invoices=selectors.invoices_list(organization=self.organization)[:INVOICES_SHOWN],
            cards=cards,
            cards_error=cards_error,
            details=details,
            details_form=BillingDetailsForm(instance=details),
            can_manage=self.can(Perm.BILLING_MANAGE),
            stripe_publishable_key=settings.STRIPE_PUBLISHABLE_KEY,
            stripe_js_url=settings.STRIPE_JS_URL,
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


class BillingWriteView(OrganizationMixin, View):
    """A form on the Billing page: run one service, flash what happened, back to the page."""

    required_permission = Perm.BILLING_MANAGE

    def post(self, request, org_slug, **kwargs):
        try:
            messages.success(request, self.run(Actor.from_request(request), **kwargs))
        except DomainError as error:
            if error.status == 404:
                raise Http404(error.message) from error
            messages.error(request, error.message)
        return redirect("org-billing", org_slug=org_slug)

    def run(self, actor: Actor, **kwargs) -> str:
        raise NotImplementedError


def _card_name(card) -> str:
    return f"{card.brand.title()} ending in {card.last4}"


class CardSetupView(OrganizationMixin, View):
    """Start adding a card; Stripe.js, in billing.js, fetches this for the SetupIntent's secret."""

    required_permission = Perm.BILLING_MANAGE

    def post(self, request, org_slug):
        try:
            intent = services.payment_method_setup_start(organization=self.organization)
        except DomainError as error:
            return JsonResponse({"error": error.message}, status=error.status)
        return JsonResponse({"client_secret": intent.client_secret})


class CardAddView(BillingWriteView):
    def run(self, actor, **kwargs):
        form = SetupIntentForm(self.request.POST)
        if not form.is_valid():
            raise DomainError("Enter the card again: its confirmation from Stripe is missing.")
        card = services.payment_method_add(
            actor=actor, organization=self.organization, setup_intent_id=form.cleaned_data["setup_intent"]
        )
        return f"{_card_name(card)} was added; invoices are charged to it."


class CardDefaultView(BillingWriteView):
    def run(self, actor, card_id):
        card = services.payment_method_set_default(
            actor=actor, organization=self.organization, payment_method_id=card_id
        )
        return f"Invoices are now charged to {_card_name(card)}."


class CardRemoveView(BillingWriteView):
    def run(self, actor, card_id):
        card = services.payment_method_remove(
            actor=actor, organization=self.organization, payment_method_id=card_id
        )
        return f"{_card_name(card)} was removed."


class BillingDetailsView(BillingWriteView):
    def run(self, actor, **kwargs):
        form = BillingDetailsForm(self.request.POST)
        if not form.is_valid():
            field, errors = next(iter(form.errors.items()))
            label = form.fields[field].label if field in form.fields else ""
            raise DomainError(f"{label}: {errors[0]}" if label else errors[0], field=field)
        services.billing_details_update(actor=actor, organization=self.organization, **form.cleaned_data)
        return "Billing details saved; Stripe's invoices carry them from now on."


class InvoicePayView(BillingWriteView):
    def run(self, actor, invoice_id):
        invoice = selectors.invoice_get(organization=self.organization, invoice_id=invoice_id)
        if invoice is None:
            raise Http404("No such invoice.")
        services.invoice_pay_now(actor=actor, invoice=invoice)
        return f"The {invoice.period:%B %Y} invoice is paid. Thank you."
