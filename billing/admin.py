"""Django admin for billing: prices and plans (versions are added, never edited), invoices
(read-only but for a credit on a draft), customers, Stripe events (read-only, processed again on
request). Every write goes through a service."""

from datetime import timedelta

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from billing import services
from billing.currency import format_minor
from billing.models import (
    Customer,
    Dunning,
    Invoice,
    InvoiceLine,
    ModelPrice,
    Plan,
    PlanAssignment,
    PlanPrice,
    WebhookEvent,
)
from billing.webhooks import webhook_event_process_request
from portal.admin import AuditedAdmin, ReadOnlyAdminMixin
from portal.audit import Actor
from portal.errors import DomainError

PRICE_FIELDS = [
    "model",
    "input_per_mtok_minor",
    "output_per_mtok_minor",
    "cached_input_per_mtok_minor",
    "effective_from",
]


def _next_hour():
    return timezone.now().replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)


class PriceVersionForm(forms.ModelForm):
    """Refuse a start the service refuses, on the field, before anything is written."""

    def clean_effective_from(self):
        try:
            return services._price_start(self.cleaned_data.get("effective_from"))
        except DomainError as error:
            raise forms.ValidationError(error.message) from None


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    """Prices are versions: staff add new ones; existing versions are never edited."""

    form = PriceVersionForm
    list_display = [
        "model",
        "input_per_mtok_minor",
        "output_per_mtok_minor",
        "cached_input_per_mtok_minor",
        "effective_from",
    ]
    search_fields = ["model"]
    list_filter = ["currency"]
    fields = PRICE_FIELDS

    def get_changeform_initial_data(self, request):
        return {"effective_from": _next_hour(), **super().get_changeform_initial_data(request)}

    def has_change_permission(self, request, obj=None):
        return obj is None

    def has_delete_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        price = services.model_price_set(
            actor=Actor.staff(request),
            model=obj.model,
            input_per_mtok_minor=obj.input_per_mtok_minor,
            output_per_mtok_minor=obj.output_per_mtok_minor,
            cached_input_per_mtok_minor=obj.cached_input_per_mtok_minor,
            effective_from=obj.effective_from,
        )
        obj.pk = price.pk


class PlanPriceInline(admin.TabularInline):
    """A plan's price versions: shown read-only, new ones added (through the service)."""

    model = PlanPrice
    form = PriceVersionForm
    fields = PRICE_FIELDS
    extra = 0
    can_delete = False

    def get_formset(self, request, obj=None, **kwargs):
        formset = super().get_formset(request, obj, **kwargs)
        formset.form.base_fields["effective_from"].initial = _next_hour
        return formset

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Plan)
class PlanAdmin(AuditedAdmin):
    list_display = [
        "name",
        "currency",
        "fee",
        "is_default",
        "rpm_limit",
        "tpm_limit",
        "concurrency_limit",
        "budget_monthly_minor",
    ]
    list_filter = ["currency", "is_default"]
    search_fields = ["name"]
    readonly_fields = ["created_at"]
    inlines = [PlanPriceInline]

    @admin.display(description="Monthly fee")
    def fee(self, plan):
        return format_minor(plan.monthly_fee_minor, plan.currency)

    def has_delete_permission(self, request, obj=None):
        return False  # invoices and assignments keep their plan

    def save_formset(self, request, form, formset, change):
        if formset.model is not PlanPrice:
            return super().save_formset(request, form, formset, change)
        for price in formset.save(commit=False):
            services.plan_price_set(
                actor=Actor.staff(request),
                plan=form.instance,
                model=price.model,
                input_per_mtok_minor=price.input_per_mtok_minor,
                output_per_mtok_minor=price.output_per_mtok_minor,
                cached_input_per_mtok_minor=price.cached_input_per_mtok_minor,
                effective_from=price.effective_from,
            )


class PlanChangeForm(forms.ModelForm):
    class Meta:
        model = PlanAssignment
        fields = ["organization", "plan"]
        help_texts = {"plan": "Applies from the first day of next month; this month keeps its plan."}


@admin.register(PlanAssignment)
class PlanAssignmentAdmin(admin.ModelAdmin):
    """Which plan each organization is on from which month. Adding one changes a plan (audited)."""

    form = PlanChangeForm
    list_display = ["organization", "plan", "period", "created_at"]
    list_filter = ["plan", "period"]
    search_fields = ["organization__name", "organization__slug"]
    autocomplete_fields = ["organization"]

    def has_change_permission(self, request, obj=None):
        return obj is None

    def has_delete_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        assignment = services.organization_plan_change(
            actor=Actor.staff(request), organization=obj.organization, plan=obj.plan
        )
        obj.pk, obj.period = assignment.pk, assignment.period


class InvoiceLineInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = InvoiceLine
    fields = ["position", "kind", "description", "quantity", "unit_price_per_mtok_minor", "amount_minor"]
    readonly_fields = fields
    extra = 0
    can_delete = False


class PeriodFilter(admin.SimpleListFilter):
    title = "period"
    parameter_name = "period"

    def lookups(self, request, model_admin):
        periods = Invoice.objects.values_list("period", flat=True).distinct().order_by("-period")[:36]
        return [(period.isoformat(), f"{period:%Y-%m}") for period in periods]

    def queryset(self, request, queryset):
        return queryset.filter(period=self.value()) if self.value() else queryset


class CreditForm(forms.Form):
    amount_minor = forms.IntegerField(
        min_value=1, label="Amount (minor units)", help_text="Cents for usd: 1250 credits 12.50."
    )
    description = forms.CharField(max_length=500, help_text="Shown to the customer on the invoice.")


@admin.register(Invoice)
class InvoiceAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Invoices are built by the close and mirrored to Stripe: staff read them, credit drafts, and
    settle open ones (paid outside Stripe, forgiven, voided), which ends the organization's dunning."""

    list_display = ["public_id", "organization", "period", "status", "total", "stripe_invoice_id"]
    list_filter = ["status", PeriodFilter]
    search_fields = ["public_id", "organization__name", "organization__slug", "stripe_invoice_id"]
    fields = [
        "public_id",
        "organization",
        "period",
        "plan",
        "status",
        "total",
        "credit",
        "no_charge_reason",
        "stripe_invoice_id",
        "push_attempts",
        "last_push_error",
        "created_at",
        "finalized_at",
        "paid_at",
        "voided_at",
    ]
    readonly_fields = fields
    inlines = [InvoiceLineInline]
    actions = ["push_again", "mark_paid", "forgive", "void"]

    @admin.display(description="Total")
    def total(self, invoice):
        return format_minor(invoice.total_minor, invoice.currency)

    @admin.display(description="Credit")
    def credit(self, invoice):
        if invoice.status != Invoice.Status.DRAFT:
            return "Only a draft invoice takes a credit."
        url = reverse("admin:billing_invoice_credit", args=[invoice.pk])
        return format_html('<a href="{}">Add a credit line</a>', url)

    def _act(self, request, queryset, act, done: str) -> None:
        """Run a staff action on each selected invoice; report each refusal by invoice."""
        if not request.user.has_perm("billing.change_invoice"):
            raise PermissionDenied
        count = 0
        for invoice in queryset.select_related("organization"):
            try:
                act(actor=Actor.staff(request), invoice=invoice)
            except DomainError as error:
                messages.error(request, f"{invoice.public_id}: {error.message}")
            else:
                count += 1
        if count:
            messages.success(request, f"{done}: {count} invoice(s).")

    @admin.action(description="Push the selected invoices to Stripe again")
    def push_again(self, request, queryset):
        self._act(request, queryset, services.invoice_push_request, "Push queued")

    @admin.action(description="Mark the selected open invoices paid outside Stripe (no charge)")
    def mark_paid(self, request, queryset):
        self._act(request, queryset, services.invoice_mark_paid, "Marked paid")

    @admin.action(description="Forgive the selected open invoices (Stripe: uncollectible)")
    def forgive(self, request, queryset):
        self._act(request, queryset, services.invoice_forgive, "Forgiven")

    @admin.action(description="Void the selected open invoices (here and in Stripe)")
    def void(self, request, queryset):
        self._act(request, queryset, services.invoice_void, "Voided")

    def get_urls(self):
        credit = self.admin_site.admin_view(self.credit_view)
        return [path("<int:invoice_pk>/credit/", credit, name="billing_invoice_credit"), *super().get_urls()]

    def credit_view(self, request, invoice_pk: int):
        """Add a credit line to a draft invoice (``billing.services.invoice_credit_add``)."""
        if not request.user.has_perm("billing.change_invoice"):
            raise PermissionDenied
        invoice = Invoice.objects.select_related("organization").filter(pk=invoice_pk).first()
        if invoice is None:
            raise Http404
        back = reverse("admin:billing_invoice_change", args=[invoice.pk])
        form = CreditForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                line = services.invoice_credit_add(
                    actor=Actor.staff(request), invoice=invoice, **form.cleaned_data
                )
            except DomainError as error:
                if error.field not in form.fields:
                    messages.error(request, error.message)
                    return redirect(back)
                form.add_error(error.field, error.message)
            else:
                messages.success(
                    request,
                    f"Credited {format_minor(-line.amount_minor, invoice.currency)} to {invoice.public_id}.",
                )
                return redirect(back)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"Credit {invoice.public_id}",
            "invoice": invoice,
            "total": format_minor(invoice.total_minor, invoice.currency),
            "form": form,
            "back": back,
        }
        return TemplateResponse(request, "admin/billing/invoice/credit.html", context)


@admin.register(Customer)
class CustomerAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["organization", "stripe_customer_id", "created_at"]
    search_fields = ["organization__name", "organization__slug", "stripe_customer_id"]


@admin.register(WebhookEvent)
class WebhookEventAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Stripe events as they arrived; staff can only have one processed again."""

    list_display = ["stripe_event_id", "type", "status", "attempts", "created", "received_at", "processed_at"]
    list_filter = ["status", "type"]
    search_fields = ["stripe_event_id"]
    readonly_fields = [
        "stripe_event_id",
        "type",
        "created",
        "status",
        "error",
        "attempts",
        "received_at",
        "processed_at",
        "payload",
    ]
    actions = ["process_again"]

    @admin.action(description="Process the selected events again")
    def process_again(self, request, queryset):
        if not request.user.has_perm("billing.change_webhookevent"):
            raise PermissionDenied
        count = 0
        for event in queryset:
            try:
                webhook_event_process_request(actor=Actor.staff(request), event=event)
            except DomainError as error:
                messages.error(request, f"{event.stripe_event_id}: {error.message}")
            else:
                count += 1
        if count:
            messages.success(request, f"Processing queued: {count} event(s).")


@admin.register(Dunning)
class DunningAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Each spell of unpaid invoices, read-only: settle its invoices to end it."""

    list_display = ["organization", "started_at", "retries_made", "warned_at", "suspended_at", "ended_at"]
    list_filter = [("ended_at", admin.EmptyFieldListFilter)]
    search_fields = ["organization__name", "organization__slug"]
    readonly_fields = [
        "organization",
        "started_at",
        "reason",
        "retries_made",
        "warned_at",
        "suspended_at",
        "ended_at",
    ]
