"""Console pages for API keys and service accounts: thin views over keys.services and keys.selectors.

A form that mints a secret redirects after success, like every console form; the page it
redirects to shows the secret once from a server-side stash (``portal.reveal``), with
``Cache-Control: no-store``. A reload neither repeats the action nor shows the secret again.
"""

from datetime import datetime, timedelta
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.core.paginator import Paginator
from django.http import Http404
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.decorators import method_decorator
from django.utils.functional import cached_property
from django.views.decorators.cache import never_cache
from django.views.generic import TemplateView

from billing.selectors import current_period, month_to_date_costs
from keys import selectors, services
from keys.forms import (
    ApiKeyCreateForm,
    ApiKeyForm,
    KeyFilterForm,
    RotateForm,
    ServiceAccountForm,
)
from keys.models import ApiKey, ServiceAccount
from portal.audit import Actor
from portal.console import OrganizationMixin
from portal.errors import DomainError
from portal.reveal import reveal_stash, reveal_take
from portal.roles import Perm
from portal.selectors import audit_events_list
from usage.export import usage_rows
from usage.selectors import METRICS
from usage.views import UsageWindow, usage_chart, usage_cost_chart

KEYS_PER_PAGE = 50
KEY_USAGE_DAYS = 7
KEY_AUDIT_EVENTS = 50
GLOB_CHARACTERS = frozenset("*?[")
# What the key page's snippets show where the secret goes: the secret itself is shown only once.
SECRET_PLACEHOLDER = "YOUR_SECRET_KEY"


def _example_model(key: ApiKey) -> str:
    """Return a model the key may call, for the snippets: its first exact name, if any."""
    exact = [name for name in key.allowed_models if not GLOB_CHARACTERS & set(name)]
    return exact[0] if exact else "your-model"


class ConsolePage(OrganizationMixin, TemplateView):
    def page(self, template: str, status: int = 200, **context) -> TemplateResponse:
        return TemplateResponse(self.request, template, self.get_context_data(**context), status=status)

    def redirect_to_secret(self, url_name: str, object_id: str, payload: dict):
        """Stash a new secret for the page ``url_name`` and send the browser there to read it."""
        reveal_id = reveal_stash(
            request=self.request,
            organization=self.organization,
            page=url_name,
            object_id=object_id,
            payload=payload,
        )
        return redirect(url_name, self.organization.slug, object_id, reveal_id)


@method_decorator(never_cache, name="dispatch")
class SecretRevealView(ConsolePage):
    """Show a secret stashed by the form that redirected here, once; afterwards say it is gone."""

    gone_template = "keys/secret_gone.html"

    def object_id(self) -> str:
        raise NotImplementedError

    def reveal_context(self, payload: dict) -> dict:
        raise NotImplementedError

    def get(self, request, org_slug, reveal_id, **kwargs):
        payload = reveal_take(
            request=request,
            organization=self.organization,
            page=request.resolver_match.url_name,
            object_id=self.object_id(),
            reveal_id=reveal_id,
        )
        if payload is None:
            return self.page(self.gone_template, status=410)
        return self.page(self.template_name, **self.reveal_context(payload))


class KeyListView(ConsolePage):
    template_name = "keys/key_list.html"
    required_permission = Perm.KEYS_VIEW

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        form = KeyFilterForm(self.request.GET)
        status = form.cleaned_data["status"] if form.is_valid() else ""
        keys = selectors.api_keys_list(organization=self.organization, status=status)
        page = Paginator(keys, KEYS_PER_PAGE).get_page(self.request.GET.get("page"))
        now = timezone.now()
        spend = _month_to_date_spend(organization=self.organization, keys=page, now=now)
        for key in page:
            key.spend = spend[key.pk]
        query = self.request.GET.copy()
        query.pop("page", None)
        context.update(
            filter_form=form,
            page=page,
            query=query.urlencode(),
            month=current_period(now),
            spend_error=next((row["error"] for row in spend.values() if row["error"]), ""),
            can_manage=self.can(Perm.KEYS_MANAGE),
        )
        return context


@method_decorator(never_cache, name="dispatch")
class KeyCreateView(ConsolePage):
    template_name = "keys/key_form.html"
    # The page exists only to write: a role that cannot create keys does not see the form.
    required_permission = Perm.KEYS_MANAGE

    def get(self, request, org_slug):
        return self.page(self.template_name, form=ApiKeyCreateForm())

    def post(self, request, org_slug):
        form = ApiKeyCreateForm(request.POST)
        if form.is_valid():
            try:
                key, secret = services.api_key_create(
                    actor=Actor.from_request(request), organization=self.organization, **form.service_fields()
                )
            except DomainError as error:
                form.add_domain_error(error)
            else:
                messages.success(request, f"Created the key {key.name}.")
                return self.redirect_to_secret("org-key-secret", key.public_id, {"secret": secret})
        return self.page(self.template_name, status=400, form=form)


class KeyObjectMixin:
    """Find the key named in the URL within the organization; any other id answers 404."""

    @cached_property
    def key(self) -> ApiKey:
        key = selectors.api_key_get(organization=self.organization, key_id=self.kwargs["key_id"])
        if key is None:
            raise Http404("No such key.")
        return key

    def get_context_data(self, **kwargs):
        kwargs.setdefault("key", self.key)
        return super().get_context_data(**kwargs)


def _month_to_date_spend(*, organization, keys, now) -> dict[int, dict]:
    """Return, per key id, the key's rated usage this UTC month and how much of its budget that
    is: one rating of the month's usage grouped by key, however many keys the page shows.

    A month whose usage spans plans of two currencies has no single amount: ``cost_minor`` is
    None and ``error`` says why, and the rest of the page still shows.
    """
    month = current_period(now)
    try:
        costs = month_to_date_costs(organization=organization, now=now, group_by=("key",))
    except DomainError as error:
        return {
            key.pk: {"month": month, "cost_minor": None, "currency": "", "error": error.message}
            for key in keys
        }
    spend = {}
    for key in keys:
        # Grouped by key, a row's group is the key's public id and name (usage.selectors.group_fields).
        cost = costs.by_group.get((key.public_id, key.name), 0)
        budget = key.budget_monthly_minor
        spend[key.pk] = {
            "month": month,
            "cost_minor": cost,
            "currency": costs.currency,
            "error": "",
            "percent": cost * 100 // budget if budget else None,
            # A bar cannot run past its end: spend over the budget fills it, the percent tells by how much.
            "bar_value": min(cost, budget) if budget else None,
        }
    return spend


def _daily_usage(key: ApiKey, *, window: UsageWindow) -> dict:
    """Return the key's requests, tokens and cost for every day of ``window``, zero-filled."""
    try:
        rows = usage_rows(
            organization=key.organization,
            start=window.start,
            end=window.end,
            granularity=window.granularity,
            key_id=key.pk,
        )
    except DomainError as error:
        return {"rows": [], "currency": "", "error": error.message}
    by_period = {row["period"]: row for row in rows}
    currency = rows[0]["currency"] if rows else ""
    return {
        "rows": [
            by_period.get(period, {"period": period, **dict.fromkeys(METRICS, 0), "cost_minor": 0})
            for period in window.periods()
        ],
        "currency": currency,
        "error": "",
    }


LIVE_LIMITS = (
    ("rpm", "Requests per minute", "rpm_limit"),
    ("tpm", "Tokens per minute", "tpm_limit"),
    ("concurrency", "Concurrent requests (peak)", "concurrency_limit"),
)


def _live_limits(key: ApiKey, *, now) -> list[dict]:
    """Return the key's load in the last minute against each of its rate limits.

    A limit of None is no limit: the load shows without a bar.
    """
    load = selectors.api_key_last_minute(key=key, now=now)
    limits = []
    for name, label, field in LIVE_LIMITS:
        limit = getattr(key, field)
        value = load[name]
        limits.append(
            {
                "name": name,
                "label": label,
                "value": value,
                "limit": limit,
                "percent": value * 100 // limit if limit else None,
                # As with the budget, a bar stops at its end; the percent says how far past it.
                "bar_value": min(value, limit) if limit else None,
            }
        )
    return limits


def _rotations(events: list) -> list:
    """Return the key's rotation events, each with the time its previous secret stops (or None)."""
    rotations = [event for event in events if event.action == "key.rotated"]
    for event in rotations:
        stops = event.metadata.get("previous_expires_at")
        event.previous_stops = datetime.fromisoformat(stops) if stops else None
    return rotations


class KeyDetailView(KeyObjectMixin, ConsolePage):
    """One key: its settings, its load in the last minute against its limits, this month's spend
    against its budget, last week's usage, its secrets and rotations, its audit trail, and
    snippets that call the edge with it."""

    template_name = "keys/key_detail.html"
    required_permission = Perm.KEYS_VIEW

    def get_context_data(self, **kwargs):
        now = timezone.now()
        today = now.date()
        window = UsageWindow.for_days(today - timedelta(days=KEY_USAGE_DAYS - 1), today)
        chart = usage_chart(organization=self.organization, window=window, key_id=self.key.pk)
        events = list(audit_events_list(organization=self.organization, target=self.key)[:KEY_AUDIT_EVENTS])
        usage_url = reverse("org-usage", args=[self.organization.slug])
        return super().get_context_data(
            secrets=self.key.secrets.all(),
            limits=_live_limits(self.key, now=now),
            spend=_month_to_date_spend(organization=self.organization, keys=[self.key], now=now)[self.key.pk],
            window=window,
            chart=chart,
            cost_chart=usage_cost_chart(
                organization=self.organization, window=window, chart=chart, key_id=self.key.pk
            ),
            daily=_daily_usage(self.key, window=window),
            has_usage=bool(chart["models"]),
            rotations=_rotations(events),
            events=events,
            usage_url=f"{usage_url}?{urlencode({**window.query(), 'key': self.key.public_id})}",
            can_manage=self.can(Perm.KEYS_MANAGE),
            edge_url=settings.EDGE_PUBLIC_URL,
            example_model=_example_model(self.key),
            secret=SECRET_PLACEHOLDER,
            **kwargs,
        )


class KeyEditView(KeyObjectMixin, ConsolePage):
    template_name = "keys/key_form.html"
    required_permission = Perm.KEYS_MANAGE

    def get(self, request, org_slug, key_id):
        return self.page(self.template_name, form=ApiKeyForm(initial=ApiKeyForm.initial_for(self.key)))

    def post(self, request, org_slug, key_id):
        form = ApiKeyForm(request.POST, initial=ApiKeyForm.initial_for(self.key))
        status = 400
        if form.is_valid():
            try:
                services.api_key_update(
                    actor=Actor.from_request(request), key=self.key, **form.service_fields(only_changed=True)
                )
            except DomainError as error:
                form.add_domain_error(error)
                status = error.status
            else:
                messages.success(request, f"Saved the key {form.cleaned_data['name']}.")
                return redirect("org-keys", org_slug=org_slug)
        return self.page(self.template_name, status=status, form=form)


@method_decorator(never_cache, name="dispatch")
class KeyRotateView(KeyObjectMixin, ConsolePage):
    template_name = "keys/key_rotate.html"
    required_permission = Perm.KEYS_MANAGE

    def get(self, request, org_slug, key_id):
        return self.page(self.template_name, form=RotateForm(now=timezone.now()))

    def post(self, request, org_slug, key_id):
        form = RotateForm(request.POST, now=timezone.now())
        status = 400
        if form.is_valid():
            try:
                key, secret, previous = services.api_key_rotate(
                    actor=Actor.from_request(request), key=self.key, grace_period=form.grace_period
                )
            except DomainError as error:
                form.add_error(None, error.message)
                status = error.status
            else:
                messages.success(request, f"Rotated the key {key.name}.")
                return self.redirect_to_secret(
                    "org-key-secret",
                    key.public_id,
                    {"secret": secret, "rotated": True, "previous": previous.pk if previous else None},
                )
        return self.page(self.template_name, status=status, form=form)


class KeySecretView(KeyObjectMixin, SecretRevealView):
    """Where creating or rotating a key lands: its new secret, with snippets that use it."""

    template_name = "keys/key_reveal.html"
    required_permission = Perm.KEYS_MANAGE

    def object_id(self) -> str:
        return self.key.public_id

    def reveal_context(self, payload: dict) -> dict:
        previous = payload.get("previous")
        return {
            "secret": payload["secret"],
            "rotated": payload.get("rotated", False),
            "previous": self.key.secrets.filter(pk=previous).first() if previous else None,
            "edge_url": settings.EDGE_PUBLIC_URL,
            "example_model": _example_model(self.key),
        }


class KeyRevokeView(KeyObjectMixin, ConsolePage):
    template_name = "keys/key_revoke.html"
    required_permission = Perm.KEYS_MANAGE

    def post(self, request, org_slug, key_id):
        try:
            key = services.api_key_revoke(actor=Actor.from_request(request), key=self.key)
        except DomainError as error:
            self.domain_error(error)
            return self.page(self.template_name, status=error.status)
        messages.success(request, f"The key {key.name} was revoked. Requests with it now fail.")
        return redirect("org-keys", org_slug=org_slug)


@method_decorator(never_cache, name="dispatch")
class ServiceAccountListView(ConsolePage):
    template_name = "keys/service_accounts.html"
    required_permission = Perm.MEMBERS_VIEW
    write_permission = Perm.MEMBERS_MANAGE

    def get_context_data(self, **kwargs):
        kwargs.setdefault("form", ServiceAccountForm())
        return super().get_context_data(
            accounts=selectors.service_accounts_list(organization=self.organization)[:200],
            can_manage=self.can(Perm.MEMBERS_MANAGE),
            **kwargs,
        )

    def post(self, request, org_slug):
        form = ServiceAccountForm(request.POST)
        if form.is_valid():
            try:
                account, _client_id, secret = services.service_account_create(
                    actor=Actor.from_request(request), organization=self.organization, **form.cleaned_data
                )
            except DomainError as error:
                form.add_domain_error(error)
            else:
                messages.success(request, f"Created the service account {account.name}.")
                return self.redirect_to_secret(
                    "org-service-account-secret", account.public_id, {"client_secret": secret}
                )
        return self.page(self.template_name, status=400, form=form)


class ServiceAccountObjectMixin:
    """Find the service account named in the URL within the organization; any other id answers 404."""

    @cached_property
    def account(self) -> ServiceAccount:
        account = selectors.service_account_get(
            organization=self.organization, account_id=self.kwargs["account_id"]
        )
        if account is None:
            raise Http404("No such service account.")
        return account

    def get_context_data(self, **kwargs):
        kwargs.setdefault("account", self.account)
        return super().get_context_data(**kwargs)


class ServiceAccountSecretView(ServiceAccountObjectMixin, SecretRevealView):
    """Where creating a service account lands: its client secret and how to get a token."""

    template_name = "keys/service_account_reveal.html"
    required_permission = Perm.MEMBERS_MANAGE

    def object_id(self) -> str:
        return self.account.public_id

    def reveal_context(self, payload: dict) -> dict:
        return {
            "client_id": self.account.client_id_display,
            "client_secret": payload["client_secret"],
            "token_url": settings.SITE_URL + reverse("idp:oidc:token"),
            "keys_api_url": settings.SITE_URL + reverse("api-keys"),
        }


class ServiceAccountRevokeView(ServiceAccountObjectMixin, ConsolePage):
    template_name = "keys/service_account_revoke.html"
    required_permission = Perm.MEMBERS_MANAGE

    def post(self, request, org_slug, account_id):
        try:
            account = services.service_account_revoke(actor=Actor.from_request(request), account=self.account)
        except DomainError as error:
            self.domain_error(error)
            return self.page(self.template_name, status=error.status)
        messages.success(request, f"The service account {account.name} was revoked.")
        return redirect("org-service-accounts", org_slug=org_slug)
