"""Billing over the REST API: the month so far, and the invoices with their lines."""

from django.http import Http404
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response

from billing import selectors
from billing.models import Invoice, InvoiceLine
from portal.api.base import OrganizationAPIView
from portal.api.views import ORG_HEADER, responses
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
