"""Billing over the REST API: the month so far, invoices, cards on file and billing details."""

from dataclasses import asdict

from django.http import Http404
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.response import Response

from billing import selectors, services
from billing.models import BillingDetails, Invoice, InvoiceLine
from portal.api.base import OrganizationAPIView
from portal.api.problems import PROBLEM_CONTENT_TYPE
from portal.api.serializers import ProblemSerializer
from portal.api.views import IDEMPOTENCY_HEADER, ORG_HEADER, responses
from portal.roles import Perm

AMOUNTS = "Amounts are integers in the currency's minor unit (cents for usd, yen for jpy)."


class LineSerializer(serializers.Serializer):
    position = serializers.IntegerField()
    kind = serializers.ChoiceField(choices=InvoiceLine.Kind.choices)
    model = serializers.CharField(help_text="Empty for a fee or a credit.")
    tokens = serializers.CharField(help_text="input, cached_input or output; empty for a fee or a credit.")
    quantity = serializers.IntegerField(help_text="Tokens, or 1 for a fee or a credit.")
    unit_price_per_mtok_minor = serializers.DecimalField(
        max_digits=16,
        decimal_places=6,
        allow_null=True,
        help_text="Minor units per million tokens; null when the price changed within the period.",
    )
    amount_minor = serializers.IntegerField(help_text="Rounded once, half-up; negative for a credit.")
    description = serializers.CharField()


class ModelAmountSerializer(serializers.Serializer):
    model = serializers.CharField()
    amount_minor = serializers.IntegerField(help_text="The sum of the model's lines.")


class UpcomingSerializer(serializers.Serializer):
    period = serializers.DateField(help_text="First day of the month being billed.")
    period_start = serializers.DateTimeField()
    period_end = serializers.DateTimeField(help_text="Exclusive.")
    plan = serializers.CharField(help_text="The plan's name.")
    currency = serializers.CharField(help_text="ISO 4217, lower case.")
    lines = LineSerializer(many=True)
    by_model = ModelAmountSerializer(many=True)
    fee_minor = serializers.IntegerField(help_text="The plan's monthly fee.")
    total_minor = serializers.IntegerField(help_text="The sum of the lines.")


class InvoiceSerializer(serializers.Serializer):
    id = serializers.CharField(source="public_id")
    period = serializers.DateField(help_text="First day of the billed month.")
    plan = serializers.CharField(source="plan.name")
    status = serializers.ChoiceField(choices=Invoice.Status.choices)
    currency = serializers.CharField()
    total_minor = serializers.IntegerField(help_text="The sum of the lines.")
    no_charge_reason = serializers.CharField(help_text="Why nothing was charged; empty otherwise.")
    hosted_invoice_url = serializers.CharField(
        help_text="Stripe's page for the invoice, once it is finalized; empty otherwise."
    )
    lines = LineSerializer(many=True, source="lines.all")
    created_at = serializers.DateTimeField()
    finalized_at = serializers.DateTimeField(allow_null=True)
    paid_at = serializers.DateTimeField(allow_null=True)
    voided_at = serializers.DateTimeField(allow_null=True)


class UpcomingView(OrganizationAPIView):
    required_permissions = {"GET": Perm.BILLING_VIEW}

    @extend_schema(
        operation_id="billing_upcoming_retrieve",
        parameters=[ORG_HEADER],
        responses=responses(UpcomingSerializer, 401, 403, 404, 429),
        description="This month's usage priced so far, by model and token kind, with the plan's fee: "
        f"what the invoice would say if the month closed now. {AMOUNTS}",
    )
    def get(self, request):
        upcoming = selectors.billing_upcoming(organization=self.organization)
        return Response(
            UpcomingSerializer(
                {
                    "period": upcoming.period,
                    "period_start": upcoming.start,
                    "period_end": upcoming.end,
                    "plan": upcoming.plan.name,
                    "currency": upcoming.plan.currency,
                    "lines": selectors.rated_lines(upcoming.rating),
                    "by_model": selectors.amounts_by_model(upcoming.rating),
                    "fee_minor": upcoming.plan.monthly_fee_minor,
                    "total_minor": upcoming.rating.total_minor,
                }
            ).data
        )


class InvoiceListView(OrganizationAPIView):
    required_permissions = {"GET": Perm.BILLING_VIEW}

    @extend_schema(
        operation_id="invoices_list",
        parameters=[ORG_HEADER],
        responses=responses(InvoiceSerializer(many=True), 401, 403, 404, 429),
        description=f"The organization's invoices, newest first, each with its lines. {AMOUNTS}",
    )
    def get(self, request):
        return self.paginated(
            selectors.invoices_list(organization=self.organization), InvoiceSerializer, ordering="-public_id"
        )


class InvoiceDetailView(OrganizationAPIView):
    required_permissions = {"GET": Perm.BILLING_VIEW}

    @extend_schema(
        operation_id="invoices_retrieve",
        parameters=[ORG_HEADER],
        responses=responses(InvoiceSerializer, 401, 403, 404, 429),
        description=f"One invoice (inv_…) with its lines. {AMOUNTS}",
    )
    def get(self, request, invoice_id: str):
        invoice = selectors.invoice_get(organization=self.organization, invoice_id=invoice_id)
        if invoice is None:
            raise Http404
        return Response(InvoiceSerializer(invoice).data)


class CardSerializer(serializers.Serializer):
    id = serializers.CharField(help_text="Stripe's payment method id (pm_…).")
    brand = serializers.CharField(help_text="visa, mastercard, amex, …")
    last4 = serializers.CharField()
    exp_month = serializers.IntegerField()
    exp_year = serializers.IntegerField()
    is_default = serializers.BooleanField(help_text="Invoices are charged to this card.")


@extend_schema_field(
    {"anyOf": [{"type": "string", "format": "email", "maxLength": 254}, {"type": "string", "maxLength": 0}]}
)
class _EmailOrBlankField(serializers.EmailField):
    """An email or nothing (drf-spectacular would document it as oneOf, which "" matches twice)."""


class BillingDetailsSerializer(serializers.ModelSerializer):
    email = _EmailOrBlankField(
        required=False,
        allow_blank=True,
        max_length=254,
        help_text="Where invoices and receipts go; empty: the first owner's email.",
    )

    class Meta:
        model = BillingDetails
        fields = [
            "email",
            "company_name",
            "address_line1",
            "address_line2",
            "city",
            "postal_code",
            "state",
            "country",
            "tax_id_type",
            "tax_id_value",
            "updated_at",
        ]
        read_only_fields = ["updated_at"]
        extra_kwargs = {"updated_at": {"allow_null": True}}


class DeclinedSerializer(ProblemSerializer):
    decline_code = serializers.CharField(
        help_text="Stripe's decline code: insufficient_funds, expired_card, generic_decline, …"
    )


CARD_ID = OpenApiParameter(
    "payment_method_id", str, OpenApiParameter.PATH, description="The card's id (pm_…)."
)


class PaymentMethodListView(OrganizationAPIView):
    required_permissions = {"GET": Perm.BILLING_VIEW}
    # A customer has a handful of cards, read from Stripe in one call: no pages.
    pagination_class = None

    @extend_schema(
        operation_id="payment_methods_list",
        parameters=[ORG_HEADER],
        responses=responses(CardSerializer(many=True), 401, 403, 404, 429, 502, 503),
        description="The cards on file, oldest first, read from Stripe. Cards are added in the console "
        "with Stripe.js, so that their numbers never pass through Tollgate.",
    )
    def get(self, request):
        return Response(CardSerializer(selectors.cards_list(organization=self.organization), many=True).data)


class PaymentMethodDefaultView(OrganizationAPIView):
    required_permissions = {"POST": Perm.BILLING_MANAGE}

    @extend_schema(
        operation_id="payment_methods_set_default",
        parameters=[ORG_HEADER, IDEMPOTENCY_HEADER, CARD_ID],
        request=None,
        responses=responses(CardSerializer, 401, 403, 404, 422, 429, 502, 503),
        description="Charge the organization's invoices to this card from now on. Open invoices are "
        "retried on it at once.",
    )
    def post(self, request, payment_method_id: str):
        card = services.payment_method_set_default(
            actor=self.actor, organization=self.organization, payment_method_id=payment_method_id
        )
        return Response(CardSerializer(_saved(card, is_default=True)).data)


class PaymentMethodDetailView(OrganizationAPIView):
    required_permissions = {"DELETE": Perm.BILLING_MANAGE}

    @extend_schema(
        operation_id="payment_methods_remove",
        parameters=[ORG_HEADER, CARD_ID],
        responses=responses({204: None}, 401, 403, 404, 409, 429, 502, 503),
        description="Remove a card. The last card cannot be removed while an invoice is open (409). "
        "Removing the default card makes the newest remaining card the default.",
    )
    def delete(self, request, payment_method_id: str):
        services.payment_method_remove(
            actor=self.actor, organization=self.organization, payment_method_id=payment_method_id
        )
        return Response(status=204)


def _saved(card, *, is_default: bool) -> selectors.SavedCard:
    return selectors.SavedCard(**asdict(card), is_default=is_default)


class BillingDetailsView(OrganizationAPIView):
    required_permissions = {"GET": Perm.BILLING_VIEW, "PATCH": Perm.BILLING_MANAGE}

    @extend_schema(
        operation_id="billing_details_retrieve",
        parameters=[ORG_HEADER],
        responses=responses(BillingDetailsSerializer, 401, 403, 404, 429),
        description="Who invoices are addressed to. Empty fields: the invoice carries the first owner's "
        "email and the organization's name. updated_at is null until details are first saved.",
    )
    def get(self, request):
        details = selectors.billing_details_get(organization=self.organization)
        return Response(BillingDetailsSerializer(details).data)

    @extend_schema(
        operation_id="billing_details_update",
        parameters=[ORG_HEADER],
        request=BillingDetailsSerializer,
        responses=responses(BillingDetailsSerializer, 400, 401, 403, 404, 415, 429, 502, 503),
        description="Change some of the billing details; Stripe's customer is updated first, so a tax "
        "id Stripe refuses is answered 400 and not stored.",
    )
    def patch(self, request):
        current = selectors.billing_details_get(organization=self.organization)
        data = BillingDetailsSerializer(current, data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        values = {**BillingDetailsSerializer(current).data, **data.validated_data}
        values.pop("updated_at")
        details = services.billing_details_update(actor=self.actor, organization=self.organization, **values)
        return Response(BillingDetailsSerializer(details).data)


class InvoicePayView(OrganizationAPIView):
    required_permissions = {"POST": Perm.BILLING_MANAGE}

    @extend_schema(
        operation_id="invoices_pay",
        parameters=[ORG_HEADER, IDEMPOTENCY_HEADER],
        request=None,
        responses={
            **responses(InvoiceSerializer, 401, 403, 404, 409, 422, 429, 502, 503),
            (402, PROBLEM_CONTENT_TYPE): OpenApiResponse(
                DeclinedSerializer, description="The card was declined; the invoice stays open."
            ),
        },
        description=f"Charge an open invoice to the default card now. Another state answers 409. {AMOUNTS}",
    )
    def post(self, request, invoice_id: str):
        invoice = selectors.invoice_get(organization=self.organization, invoice_id=invoice_id)
        if invoice is None:
            raise Http404
        services.invoice_pay_now(actor=self.actor, invoice=invoice)
        # Read again: the lines are prefetched with it.
        return Response(
            InvoiceSerializer(
                selectors.invoice_get(organization=self.organization, invoice_id=invoice_id)
            ).data
        )
