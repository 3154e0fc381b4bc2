"""Console forms for API keys and service accounts: turn the page's text into service arguments."""

import json
from datetime import datetime, timedelta
from decimal import Decimal

from django import forms
from django.core.exceptions import ValidationError

from keys import services
from keys.models import ApiKey
from portal.errors import DomainError
from portal.roles import Role

CENT = Decimal("0.01")


def cents_to_dollars(minor: int | None) -> Decimal | None:
    return None if minor is None else (Decimal(minor) * CENT).quantize(CENT)


def dollars_to_cents(amount: Decimal | None) -> int | None:
    """Convert exactly: the form has already refused amounts with more than two decimals."""
    if amount is None:
        return None
    cents = amount.scaleb(2)
    if cents != cents.to_integral_value():
        raise ValueError(f"{amount} has fractions of a cent")
    return int(cents)


class LinesField(forms.CharField):
    """A textarea holding one value per line; blank lines are ignored."""

    widget = forms.Textarea

    def __init__(self, *, rows: int = 3, **kwargs):
        kwargs.setdefault("required", False)
        super().__init__(**kwargs)
        self.widget.attrs.update(rows=rows, spellcheck="false", autocapitalize="off")

    def to_python(self, value) -> list[str]:
        if isinstance(value, list | tuple):
            return list(value)
        return [line.strip() for line in super().to_python(value).splitlines() if line.strip()]

    def prepare_value(self, value):
        return "\n".join(value) if isinstance(value, list | tuple) else value


class JSONObjectField(forms.JSONField):
    """A JSON object typed into a textarea; empty means ``{}``."""

    def to_python(self, value) -> dict:
        if self.disabled or isinstance(value, dict):
            return value
        if value in self.empty_values:
            return {}
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValidationError(
                f"This is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno}).", code="invalid"
            )
        if not isinstance(parsed, dict):
            raise ValidationError('Enter a JSON object, like {"team": "search"}.', code="not_object")
        return parsed

    def prepare_value(self, value):
        if value is None or value == {}:
            return ""
        if isinstance(value, str):  # the text as typed, shown back unchanged
            return value
        return json.dumps(value, indent=2, ensure_ascii=False)


class DomainErrorFormMixin:
    """Show a service's DomainError on the field it names, or above the form."""

    # Service argument -> form field, where the names differ.
    service_field_names: dict[str, str] = {}

    def add_domain_error(self, error: DomainError) -> None:
        field = self.service_field_names.get(error.field, error.field)
        self.add_error(field if field in self.fields else None, error.message)


def _service_cleaned(clean, values):
    """Check with the service's own rules, so that every error shows at once."""
    try:
        return clean(values)
    except DomainError as error:
        raise ValidationError(error.message, code=error.code)


class ApiKeyForm(DomainErrorFormMixin, forms.Form):
    """The settings of a key that can change over its life (everything but the environment)."""

    service_field_names = {"budget_monthly_minor": "budget"}

    name = forms.CharField(max_length=100)
    expires_at = forms.DateTimeField(
        label="Expires (UTC)",
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        help_text="Leave empty for a key that does not expire.",
    )
    allowed_models = LinesField(
        help_text="One model per line; globs such as llama-3.1-* allowed. Empty: every model."
    )
    allowed_ips = LinesField(
        label="Allowed IPs", help_text="One address or CIDR range per line. Empty: any address."
    )
    rpm_limit = forms.IntegerField(label="Requests per minute", required=False, min_value=1)
    tpm_limit = forms.IntegerField(label="Tokens per minute", required=False, min_value=1)
    concurrency_limit = forms.IntegerField(label="Concurrent requests", required=False, min_value=1)
    budget = forms.DecimalField(
        label="Monthly budget (USD)",
        required=False,
        min_value=0,
        max_digits=14,
        decimal_places=2,
        error_messages={
            "max_decimal_places": "Give the budget in dollars and cents: at most 2 decimals.",
            "max_digits": "That budget is too large.",
            "max_whole_digits": "That budget is too large.",
        },
        help_text="Requests stop when the month's spend reaches it. Empty: no cap.",
    )
    budget_alert_percent = forms.IntegerField(
        label="Budget alert at (%)", min_value=1, max_value=100, initial=80
    )
    rotation_reminder_days = forms.IntegerField(
        label="Rotation reminder (days)",
        required=False,
        min_value=1,
        max_value=3650,
        help_text="Email a reminder when the secret is this many days old. Empty: no reminder.",
    )
    metadata = JSONObjectField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "spellcheck": "false"}),
        help_text='A JSON object for your own bookkeeping, e.g. {"team": "search"}.',
    )

    def clean_allowed_models(self) -> list[str]:
        return _service_cleaned(services.clean_allowed_models, self.cleaned_data["allowed_models"])

    def clean_allowed_ips(self) -> list[str]:
        return _service_cleaned(services.clean_allowed_ips, self.cleaned_data["allowed_ips"])

    @staticmethod
    def initial_for(key: ApiKey) -> dict:
        """Return the form's initial values for an existing key."""
        expires_at = key.expires_at.replace(second=0, microsecond=0) if key.expires_at else None
        return {
            "name": key.name,
            "expires_at": expires_at,
            "allowed_models": list(key.allowed_models),
            "allowed_ips": list(key.allowed_ips),
            "rpm_limit": key.rpm_limit,
            "tpm_limit": key.tpm_limit,
            "concurrency_limit": key.concurrency_limit,
            "budget": cents_to_dollars(key.budget_monthly_minor),
            "budget_alert_percent": key.budget_alert_percent,
            "rotation_reminder_days": key.rotation_reminder_days,
            "metadata": key.metadata,
        }

    def service_fields(self, *, only_changed: bool = False) -> dict:
        """Return the cleaned values as the service's keyword arguments.

        ``only_changed`` keeps what the person edited, so that an untouched past expiry
        on an expired key does not block every other change.
        """
        names = self.changed_data if only_changed else list(self.cleaned_data)
        fields = {}
        for name in names:
            if name == "budget":
                fields["budget_monthly_minor"] = dollars_to_cents(self.cleaned_data["budget"])
            else:
                fields[name] = self.cleaned_data[name]
        return fields


class ApiKeyCreateForm(ApiKeyForm):
    environment = forms.ChoiceField(
        choices=ApiKey.Environment.choices,
        initial=ApiKey.Environment.LIVE,
        help_text="Test keys start with tg_test_ and are meant for development.",
    )

    field_order = ["name", "environment"]


class KeyFilterForm(forms.Form):
    status = forms.ChoiceField(choices=[("", "All"), *ApiKey.Status.choices], required=False)


GRACE_CHOICES = [
    (0, "Immediately"),
    (3600, "1 hour"),
    (24 * 3600, "24 hours"),
    (7 * 24 * 3600, "7 days"),
]


class RotateForm(forms.Form):
    grace = forms.TypedChoiceField(
        label="Keep the current secret working for",
        choices=GRACE_CHOICES,
        coerce=int,
        initial=24 * 3600,
        widget=forms.RadioSelect,
    )

    def __init__(self, *args, now: datetime, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["grace"].choices = [
            (seconds, f"{label} — {_stops(now, seconds)}") for seconds, label in GRACE_CHOICES
        ]

    @property
    def grace_period(self) -> timedelta:
        return timedelta(seconds=self.cleaned_data["grace"])


def _stops(now: datetime, seconds: int) -> str:
    if not seconds:
        return "the current secret stops now"
    return f"the current secret stops at {(now + timedelta(seconds=seconds)):%Y-%m-%d %H:%M} UTC"


class ServiceAccountForm(DomainErrorFormMixin, forms.Form):
    name = forms.CharField(max_length=100)
    role = forms.ChoiceField(
        choices=[(value, label) for value, label in Role.choices if value != Role.OWNER],
        initial=Role.VIEWER,
        help_text="What the account may do through the API, as for a member with this role.",
    )
