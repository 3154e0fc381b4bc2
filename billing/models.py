from django.conf import settings
from django.db import models
from django.utils import timezone

from portal.ids import public_id


def new_invoice_id() -> str:
    return public_id("inv")


class ModelPrice(models.Model):
    """The price of a model from a moment on, in cents per million tokens (versioned by date)."""

    model = models.CharField(max_length=200, help_text="Model name exactly as clients request it.")
    input_per_mtok_minor = models.DecimalField(max_digits=16, decimal_places=6)
    output_per_mtok_minor = models.DecimalField(max_digits=16, decimal_places=6)
    cached_input_per_mtok_minor = models.DecimalField(max_digits=16, decimal_places=6)
    currency = models.CharField(max_length=3, default="usd")
    effective_from = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["model", "-effective_from"]
        constraints = [
            models.UniqueConstraint(fields=["model", "effective_from"], name="modelprice_unique_version"),
            models.CheckConstraint(
                condition=models.Q(input_per_mtok_minor__gte=0)
                & models.Q(output_per_mtok_minor__gte=0)
                & models.Q(cached_input_per_mtok_minor__gte=0),
                name="modelprice_non_negative",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.model} from {self.effective_from:%Y-%m-%d %H:%M}"


class Plan(models.Model):
    """What an organization pays: a monthly fee, model prices and default limits."""

    name = models.CharField(max_length=100, unique=True)
    currency = models.CharField(max_length=3, default="usd", help_text="ISO 4217 code, lower case.")
    monthly_fee_minor = models.BigIntegerField(default=0, help_text="Platform fee per month in minor units.")
    is_default = models.BooleanField(default=False, help_text="The plan of organizations never given one.")
    # Limits given to an organization that joins the plan (each organization may then differ).
    rpm_limit = models.PositiveIntegerField(null=True, blank=True)
    tpm_limit = models.PositiveIntegerField(null=True, blank=True)
    concurrency_limit = models.PositiveIntegerField(null=True, blank=True)
    budget_monthly_minor = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(
                fields=["is_default"], condition=models.Q(is_default=True), name="plan_one_default"
            ),
            models.CheckConstraint(
                condition=models.Q(monthly_fee_minor__gte=0), name="plan_fee_non_negative"
            ),
            models.CheckConstraint(
                condition=models.Q(currency__regex=r"^[a-z]{3}$"), name="plan_currency_iso"
            ),
        ]

    def __str__(self) -> str:
        return self.name


class PlanPrice(models.Model):
    """A plan's own price for a model from an hour on; models without one use ``ModelPrice``."""

    plan = models.ForeignKey(Plan, on_delete=models.CASCADE, related_name="prices")
    model = models.CharField(max_length=200)
    input_per_mtok_minor = models.DecimalField(max_digits=16, decimal_places=6)
    output_per_mtok_minor = models.DecimalField(max_digits=16, decimal_places=6)
    cached_input_per_mtok_minor = models.DecimalField(max_digits=16, decimal_places=6)
    effective_from = models.DateTimeField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["plan", "model", "-effective_from"]
        constraints = [
            models.UniqueConstraint(
                fields=["plan", "model", "effective_from"], name="planprice_unique_version"
            ),
            models.CheckConstraint(
                condition=models.Q(input_per_mtok_minor__gte=0)
                & models.Q(output_per_mtok_minor__gte=0)
                & models.Q(cached_input_per_mtok_minor__gte=0),
                name="planprice_non_negative",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.plan}: {self.model} from {self.effective_from:%Y-%m-%d %H:%M}"


class PlanAssignment(models.Model):
    """An organization's plan from the first day of a period on (changes apply from the next)."""

    organization = models.ForeignKey("portal.Organization", on_delete=models.CASCADE, related_name="+")
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="+")
    period = models.DateField(help_text="First day of the month from which the plan applies.")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["organization", "-period"]
        constraints = [
            models.UniqueConstraint(fields=["organization", "period"], name="planassignment_one_per_period"),
            models.CheckConstraint(condition=models.Q(period__day=1), name="planassignment_first_of_month"),
        ]

    def __str__(self) -> str:
        return f"{self.organization_id} on {self.plan_id} from {self.period:%Y-%m}"


class Customer(models.Model):
    """An organization's Stripe customer."""

    organization = models.OneToOneField("portal.Organization", on_delete=models.PROTECT, related_name="+")
    stripe_customer_id = models.CharField(max_length=255, unique=True)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.stripe_customer_id


class BillingDetails(models.Model):
    """Who an organization's invoices are addressed to; mirrored to its Stripe customer."""

    class TaxIdType(models.TextChoices):
        # Stripe's names for the tax ids its invoices print.
        EU_VAT = "eu_vat", "EU VAT number"
        GB_VAT = "gb_vat", "UK VAT number"
        CH_VAT = "ch_vat", "Swiss VAT number"
        NO_VAT = "no_vat", "Norwegian VAT number"
        US_EIN = "us_ein", "US EIN"
        CA_BN = "ca_bn", "Canadian BN"
        AU_ABN = "au_abn", "Australian ABN"
        NZ_GST = "nz_gst", "New Zealand GST number"
        IN_GST = "in_gst", "Indian GST number"

    organization = models.OneToOneField("portal.Organization", on_delete=models.CASCADE, related_name="+")
    email = models.EmailField(blank=True, default="", help_text="Where invoices and receipts go.")
    company_name = models.CharField(max_length=200, blank=True, default="")
    address_line1 = models.CharField(max_length=200, blank=True, default="")
    address_line2 = models.CharField(max_length=200, blank=True, default="")
    city = models.CharField(max_length=100, blank=True, default="")
    postal_code = models.CharField(max_length=20, blank=True, default="")
    state = models.CharField(max_length=100, blank=True, default="")
    country = models.CharField(max_length=2, blank=True, default="", help_text="ISO 3166-1 alpha-2.")
    tax_id_type = models.CharField(max_length=16, choices=TaxIdType.choices, blank=True, default="")
    tax_id_value = models.CharField(max_length=50, blank=True, default="")
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "billing details"
        constraints = [
            models.CheckConstraint(
                condition=models.Q(tax_id_type="", tax_id_value="")
                | (~models.Q(tax_id_type="") & ~models.Q(tax_id_value="")),
                name="billingdetails_tax_id_whole",
            ),
            models.CheckConstraint(
                condition=models.Q(country="") | models.Q(country__regex=r"^[A-Z]{2}$"),
                name="billingdetails_country_iso",
            ),
        ]

    def __str__(self) -> str:
        return self.company_name or self.email or str(self.organization_id)


class Invoice(models.Model):
    """One organization's bill for one month, computed here and mirrored to Stripe."""

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        OPEN = "open", "Open"
        PAID = "paid", "Paid"
        UNCOLLECTIBLE = "uncollectible", "Uncollectible"
        VOID = "void", "Void"

    public_id = models.CharField(max_length=40, unique=True, default=new_invoice_id, editable=False)
    organization = models.ForeignKey("portal.Organization", on_delete=models.PROTECT, related_name="+")
    period = models.DateField(help_text="First day of the billed month.")
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="+")
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT)
    total_minor = models.BigIntegerField(default=0)
    # Empty when the invoice has nothing to pay: such invoices never reach Stripe.
    stripe_invoice_id = models.CharField(max_length=255, blank=True, default="")
    no_charge_reason = models.CharField(max_length=200, blank=True, default="")
    # Stripe's page where the customer can see and pay the invoice; empty until it is finalized.
    hosted_invoice_url = models.URLField(max_length=1000, blank=True, default="")
    push_attempts = models.PositiveIntegerField(default=0)
    last_push_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    finalized_at = models.DateTimeField(null=True, blank=True)
    paid_at = models.DateTimeField(null=True, blank=True)
    voided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-period", "organization"]
        constraints = [
            models.UniqueConstraint(fields=["organization", "period"], name="invoice_one_per_period"),
            models.CheckConstraint(condition=models.Q(period__day=1), name="invoice_first_of_month"),
        ]
        indexes = [
            models.Index(fields=["status", "period"]),
            models.Index(fields=["organization", "-public_id"]),
        ]

    def __str__(self) -> str:
        return f"{self.organization_id} {self.period:%Y-%m}"


class InvoiceLine(models.Model):
    """One priced line; the invoice total is the sum of its lines."""

    class Kind(models.TextChoices):
        USAGE = "usage", "Usage"
        FEE = "fee", "Platform fee"
        CREDIT = "credit", "Credit"

    class Tokens(models.TextChoices):
        INPUT = "input", "Input tokens"
        CACHED_INPUT = "cached_input", "Cached input tokens"
        OUTPUT = "output", "Output tokens"

    invoice = models.ForeignKey(Invoice, on_delete=models.CASCADE, related_name="lines")
    position = models.PositiveIntegerField()
    kind = models.CharField(max_length=8, choices=Kind.choices)
    model = models.CharField(max_length=200, blank=True, default="")
    tokens = models.CharField(max_length=16, choices=Tokens.choices, blank=True, default="")
    quantity = models.BigIntegerField(default=0, help_text="Tokens, or 1 for a fee or credit.")
    # The unit price when one price applied to the whole line; empty when it changed mid-period.
    unit_price_per_mtok_minor = models.DecimalField(max_digits=16, decimal_places=6, null=True, blank=True)
    amount_minor = models.BigIntegerField()
    description = models.CharField(max_length=500)
    stripe_invoice_item_id = models.CharField(max_length=255, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["invoice", "position"]
        constraints = [
            models.UniqueConstraint(fields=["invoice", "position"], name="invoiceline_unique_position"),
            models.CheckConstraint(
                condition=~models.Q(kind="credit") | models.Q(amount_minor__lte=0),
                name="invoiceline_credit_negative",
            ),
        ]

    def __str__(self) -> str:
        return self.description


class WebhookEvent(models.Model):
    """One Stripe event as delivered (or backfilled), stored before it is processed."""

    class Status(models.TextChoices):
        RECEIVED = "received", "Received"
        PROCESSED = "processed", "Processed"
        FAILED = "failed", "Failed"
        IGNORED = "ignored", "Ignored"

    stripe_event_id = models.CharField(max_length=255, unique=True)
    type = models.CharField(max_length=100)
    created = models.DateTimeField(help_text="When Stripe created the event.")
    payload = models.JSONField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RECEIVED)
    error = models.TextField(blank=True, default="", help_text="The last processing error, if any.")
    attempts = models.PositiveIntegerField(default=0)
    received_at = models.DateTimeField(default=timezone.now)
    processed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-received_at", "-pk"]
        indexes = [models.Index(fields=["status", "received_at"]), models.Index(fields=["type"])]

    def __str__(self) -> str:
        return f"{self.type} {self.stripe_event_id}"


class Dunning(models.Model):
    """One spell of an organization owing a failed payment, from the first failure to settlement.

    Its moments drive the timeline: retries ``BILLING_RETRY_DAYS`` after ``started_at``, the
    warning three days before the suspension, the suspension ``BILLING_GRACE_DAYS`` after it.
    """

    organization = models.ForeignKey("portal.Organization", on_delete=models.PROTECT, related_name="+")
    started_at = models.DateTimeField(default=timezone.now)
    reason = models.CharField(max_length=500, help_text="Why the last payment failed (Stripe's words).")
    retries_made = models.PositiveIntegerField(default=0)
    warned_at = models.DateTimeField(null=True, blank=True)
    suspended_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-started_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization"],
                condition=models.Q(ended_at__isnull=True),
                name="dunning_one_open_per_organization",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.organization_id} since {self.started_at:%Y-%m-%d}"
