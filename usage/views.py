"""Console pages for usage: thin views over the rollups (usage.selectors), never the raw events."""

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from urllib.parse import urlencode

from django import forms
from django.conf import settings
from django.contrib import messages
from django.shortcuts import redirect
from django.urls import reverse
from django.utils import timezone
from django.views import View
from django.views.generic import TemplateView

from billing.currency import minor_exponent
from billing.selectors import (
    FORECAST_DAYS,
    billing_upcoming,
    current_period,
    month_to_date_costs,
    plan_for,
    usage_costs,
    usage_forecast,
)
from keys.selectors import api_key_get, api_keys_list
from portal.console import OrganizationMixin
from portal.errors import DomainError
from portal.roles import Perm
from usage import requestlog, selectors
from usage.colors import OTHER_ERRORS_COLOR, REFUSALS_COLOR, model_color
from usage.export import usage_csv_response, usage_rows
from usage.partitions import month_start

PRESETS = {
    "24h": ("Last 24 hours", timedelta(hours=24)),
    "7d": ("Last 7 days", timedelta(days=7)),
    "30d": ("Last 30 days", timedelta(days=30)),
}
DEFAULT_PRESET = "7d"
# Up to two days a chart is by hour; beyond, by day, so that a week is seven bars, not 168.
HOURLY_MAX_SPAN = timedelta(hours=48)
MAX_SPAN = timedelta(days=366 * 2)
CHART_METRICS = ("requests", "input_tokens", "output_tokens")
EXPORT_GROUPS = ("model", "key")
TOP_KEYS = 10
DASHBOARD_DAYS = 7
DASHBOARD_TOP_KEYS = 5
# The request log's time inputs: text, in ISO 8601, read the same in every browser.
ISO_TIME_ATTRS = {"placeholder": "YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ", "size": 22}


@dataclass(frozen=True)
class UsageWindow:
    """A half-open time range ``[start, end)`` and the period its charts are bucketed by."""

    start: datetime
    end: datetime
    granularity: str
    preset: str = ""

    @classmethod
    def for_preset(cls, preset: str, *, now: datetime) -> "UsageWindow":
        span = PRESETS[preset][1]
        if span > HOURLY_MAX_SPAN:
            # Charted by day, so whole days: today and the days before it, none cut in two.
            today = now.date()
            return cls.for_days(today - timedelta(days=span.days - 1), today, preset=preset)
        # Up to the end of the current hour, so the hour in progress is on the chart.
        end = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        return cls.around(end - span, end, preset=preset)

    @classmethod
    def for_days(cls, first: date, last: date, preset: str = "") -> "UsageWindow":
        """Cover whole UTC days, ``first`` to ``last`` inclusive."""
        return cls.around(_midnight(first), _midnight(last + timedelta(days=1)), preset=preset)

    @classmethod
    def around(cls, start: datetime, end: datetime, preset: str = "") -> "UsageWindow":
        granularity = "hour" if end - start <= HOURLY_MAX_SPAN else "day"
        return cls(start=start, end=end, granularity=granularity, preset=preset)

    @property
    def first_day(self) -> date:
        return self.start.date()

    @property
    def last_day(self) -> date:
        return (self.end - timedelta(microseconds=1)).date()

    def periods(self) -> list[datetime]:
        """Return the start of every hour or day of the window, the chart's buckets."""
        step = timedelta(hours=1) if self.granularity == "hour" else timedelta(days=1)
        count = (self.end - self.start) // step
        return [self.start + step * position for position in range(count)]

    def positions(self) -> dict[datetime, int]:
        """Map each bucket's start to its place in ``periods``: where a row read by period goes."""
        return {period: position for position, period in enumerate(self.periods())}

    def query(self) -> dict[str, str]:
        """Return the URL parameters that select this window again."""
        if self.preset:
            return {"range": self.preset}
        return {"start": self.first_day.isoformat(), "end": self.last_day.isoformat()}


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=timezone.get_current_timezone())


class UsageFilterForm(forms.Form):
    """The page's query string: a preset range or two dates, and optionally one key."""

    range = forms.ChoiceField(
        required=False, label="Range", choices=[(name, label) for name, (label, _) in PRESETS.items()]
    )
    start = forms.DateField(required=False, label="From")
    end = forms.DateField(required=False, label="To")
    key = forms.CharField(required=False, max_length=40, label="Key")

    def __init__(self, *args, organization, now: datetime, **kwargs):
        super().__init__(*args, **kwargs)
        self.organization = organization
        self.now = now

    def clean(self):
        data = super().clean()
        if self.errors:
            return data
        data["window"] = self._window(data)
        data["api_key"] = None
        if data["key"]:
            # Another organization's key reads exactly like one that does not exist.
            data["api_key"] = api_key_get(organization=self.organization, key_id=data["key"])
            if data["api_key"] is None:
                self.add_error("key", "No such key in this organization.")
        return data

    def _window(self, data) -> UsageWindow:
        preset = data["range"]
        if preset or not (data["start"] or data["end"]):
            return UsageWindow.for_preset(preset or DEFAULT_PRESET, now=self.now)
        last = data["end"] or self.now.date()
        first = data["start"] or last - timedelta(days=6)
        if first > last:
            raise forms.ValidationError("The start date must be on or before the end date.")
        if last - first >= MAX_SPAN:
            raise forms.ValidationError("Choose at most two years at a time.")
        if last >= date.max:
            raise forms.ValidationError("The end date is too far in the future.")
        return UsageWindow.for_days(first, last)

    def error_messages(self) -> list[str]:
        """Return every error as one sentence that names its field."""
        sentences = []
        for field, errors in self.errors.items():
            label = self.fields[field].label if field in self.fields else ""
            sentences += [f"{label}: {error}" if label else error for error in errors]
        return sentences


def usage_chart(*, organization, window: UsageWindow, key_id: int | None = None) -> dict:
    """Return requests and tokens per model for every period of the window, zero-filled: a
    period without usage is a zero, never a gap a line would be drawn across.

    The shape is what ``static/usage.js`` draws: ``labels`` (UTC), ``periods`` (ISO 8601) and
    one entry per model, busiest first, with its colour and each metric a list aligned with
    ``periods``.
    """
    periods = window.periods()
    index = window.positions()
    by_model: dict[str, dict[str, list[int]]] = {}
    for row in selectors.usage_series(
        organization=organization,
        start=window.start,
        end=window.end,
        granularity=window.granularity,
        group_by=("model",),
        key_id=key_id,
    ):
        series = by_model.setdefault(
            row["group_model"], {metric: [0] * len(periods) for metric in CHART_METRICS}
        )
        for metric in CHART_METRICS:
            series[metric][index[row["period"]]] = row[metric] or 0
    models = sorted(by_model, key=lambda model: (-sum(by_model[model]["requests"]), model))
    label_format = "%Y-%m-%d %H:00" if window.granularity == "hour" else "%Y-%m-%d"
    return {
        "granularity": window.granularity,
        "labels": [period.strftime(label_format) for period in periods],
        "periods": [period.isoformat() for period in periods],
        "models": [{"model": model, "color": model_color(model), **by_model[model]} for model in models],
    }


def usage_by_model(*, organization, window: UsageWindow, chart: dict, key_id: int | None = None) -> dict:
    """Return each charted model's requests, tokens and cost over the window, in the chart's order.

    A window over plans of two currencies has no single cost: its rows carry ``cost_minor``
    ``None`` and ``cost_error`` says why, and the rest of the page still shows.
    """
    try:
        costs = usage_costs(
            organization=organization, start=window.start, end=window.end, group_by=("model",), key_id=key_id
        )
    except DomainError as error:
        costs, cost_error = None, error.message
    else:
        cost_error = ""
    rows = [
        {
            "model": series["model"],
            "color": series["color"],
            **{metric: sum(series[metric]) for metric in CHART_METRICS},
            "cost_minor": costs.by_group.get((series["model"],), 0) if costs else None,
        }
        for series in chart["models"]
    ]
    return {"rows": rows, "currency": costs.currency if costs else "", "cost_error": cost_error}


def usage_cost_chart(
    *, organization, window: UsageWindow, chart: dict, key_id: int | None = None
) -> dict | None:
    """Return each charted model's cost for every period of the window, zero-filled, in the
    chart's order and colours; None when the window has no single currency (``usage_by_model``
    says why).

    The shape is what ``static/usage.js`` draws as ``cost``: ``labels``, ``currency`` and its
    ``exponent`` (decimals of its minor unit), and per model ``cost_minor``, integers in the minor
    unit aligned with the labels, each period rounded once as the CSV rounds its rows.
    """
    try:
        costs = usage_costs(
            organization=organization,
            start=window.start,
            end=window.end,
            granularity=window.granularity,
            group_by=("model",),
            key_id=key_id,
        )
    except DomainError:
        return None
    index = window.positions()
    by_model = {series["model"]: [0] * len(index) for series in chart["models"]}
    for (period, model), amount in costs.by_group.items():
        by_model[model][index[period]] = amount
    return {
        "labels": chart["labels"],
        "currency": costs.currency.upper(),
        "exponent": minor_exponent(costs.currency),
        "models": [
            {"model": series["model"], "color": series["color"], "cost_minor": by_model[series["model"]]}
            for series in chart["models"]
        ],
    }


def usage_errors_chart(*, organization, window: UsageWindow, chart: dict, key_id: int | None = None) -> dict:
    """Return the refused requests and the other errors for every period of the window, zero-filled,
    on the chart's labels.

    Refusals are the edge's answers to a known key (401, 402, 403, 429 with a reason); the other
    errors are every other answer of 400 or more (an upstream's 4xx or 5xx, the edge's 502 or
    504, 499 when the client went away), so the two add up to the rollups' ``errors``. The shape
    is what ``static/usage.js`` draws as ``errors``: ``labels`` and two ``series``, each with its
    label, its fixed colour and ``counts`` aligned with the labels.
    """
    index = window.positions()
    refusals, other_errors = [0] * len(index), [0] * len(index)
    for row in selectors.usage_series(
        organization=organization,
        start=window.start,
        end=window.end,
        granularity=window.granularity,
        key_id=key_id,
    ):
        refusals[index[row["period"]]] = row["refusals"]
        other_errors[index[row["period"]]] = row["errors"] - row["refusals"]
    return {
        "labels": chart["labels"],
        "series": [
            {"name": "refusals", "label": "Refused", "color": REFUSALS_COLOR, "counts": refusals},
            {
                "name": "other_errors",
                "label": "Other errors",
                "color": OTHER_ERRORS_COLOR,
                "counts": other_errors,
            },
        ],
    }


def usage_summary(*, organization, window: UsageWindow, key_id: int | None = None, top: int) -> dict:
    """Return the chart data, the totals and the busiest keys of one window."""
    chart = usage_chart(organization=organization, window=window, key_id=key_id)
    totals = selectors.usage_totals(
        organization=organization, start=window.start, end=window.end, key_id=key_id
    )
    keys = selectors.top_keys(organization=organization, start=window.start, end=window.end, limit=top)
    return {"chart": chart, "totals": totals, "top_keys": keys, "has_usage": bool(chart["models"])}


def dashboard_usage(*, organization, now: datetime) -> dict:
    """Return the dashboard's usage panel: the last seven UTC days, by day, and the top keys."""
    today = now.date()
    window = UsageWindow.for_days(today - timedelta(days=DASHBOARD_DAYS - 1), today)
    summary = usage_summary(organization=organization, window=window, top=DASHBOARD_TOP_KEYS)
    usage_url = reverse("org-usage", args=[organization.slug])
    for row in summary["top_keys"]:
        row["url"] = f"{usage_url}?{urlencode({**window.query(), 'key': row['key_public_id']})}"
    return {**summary, "window": window, "url": f"{usage_url}?{urlencode(window.query())}"}


def dashboard_money(*, organization, now: datetime, with_billing: bool) -> dict:
    """Return the dashboard's money panel: the UTC month's usage cost so far, in total and by
    model, and its forecast to the month's end; ``with_billing``, also the plan with its fee and
    the invoice so far (usage lines and fee, as the Billing page rates them).

    The month's hours are all billed in the month itself (only a closed month's late usage moves
    to the next), so its cost has one currency; the forecast's past days may not, and then
    ``forecast_error`` says so.
    """
    month_to_date = month_to_date_costs(organization=organization, now=now)
    by_model = month_to_date_costs(organization=organization, now=now, group_by=("model",))
    try:
        forecast = usage_forecast(organization=organization, now=now, month_to_date=month_to_date)
    except DomainError as error:
        forecast, forecast_error = None, error.message
    else:
        forecast_error = ""
    money = {
        "period": current_period(now),
        "currency": month_to_date.currency,
        "cost_minor": month_to_date.by_group.get((), 0),
        "by_model": [
            {"model": model, "color": model_color(model), "cost_minor": amount}
            for (model,), amount in sorted(by_model.by_group.items(), key=lambda item: (-item[1], item[0]))
        ],
        "forecast": forecast,
        "forecast_error": forecast_error,
        "forecast_days": FORECAST_DAYS,
    }
    if with_billing:
        upcoming = billing_upcoming(organization=organization, now=now)
        money.update(plan=upcoming.plan, invoice_minor=upcoming.rating.total_minor)
    return money


class UsageView(OrganizationMixin, TemplateView):
    template_name = "usage/usage.html"
    required_permission = Perm.USAGE_VIEW

    def get(self, request, *args, **kwargs):
        form = UsageFilterForm(request.GET, organization=self.organization, now=timezone.now())
        if not form.is_valid():
            context = self.get_context_data(
                errors=form.error_messages(),
                start_value=request.GET.get("start", ""),
                end_value=request.GET.get("end", ""),
                presets=self._presets(window=None, key=None),
            )
            return self.render_to_response(context, status=400)
        window, key = form.cleaned_data["window"], form.cleaned_data["api_key"]
        key_id = key.pk if key else None
        summary = usage_summary(organization=self.organization, window=window, key_id=key_id, top=TOP_KEYS)
        by_model = usage_by_model(
            organization=self.organization,
            window=window,
            chart=summary["chart"],
            key_id=key_id,
        )
        for row in summary["top_keys"]:
            row["url"] = "?" + urlencode({**window.query(), "key": row["key_public_id"]})
        query = {**window.query(), **({"key": key.public_id} if key else {})}
        api_query = {
            "start": window.start.isoformat(),
            "end": window.end.isoformat(),
            "granularity": window.granularity,
            "group_by": ",".join(EXPORT_GROUPS),
            **({"key": key.public_id} if key else {}),
            "format": "csv",
        }
        context = self.get_context_data(
            window=window,
            key=key,
            start_value=window.first_day.isoformat(),
            end_value=window.last_day.isoformat(),
            presets=self._presets(window=window, key=key),
            all_keys_query=urlencode(window.query()),
            csv_url=f"{reverse('org-usage-export', args=[self.organization.slug])}?{urlencode(query)}",
            api_csv_url=request.build_absolute_uri(f"{reverse('api-usage')}?{urlencode(api_query)}"),
            by_model=by_model,
            cost_chart=usage_cost_chart(
                organization=self.organization,
                window=window,
                chart=summary["chart"],
                key_id=key_id,
            ),
            errors_chart=usage_errors_chart(
                organization=self.organization,
                window=window,
                chart=summary["chart"],
                key_id=key_id,
            ),
            **summary,
        )
        return self.render_to_response(context)

    @staticmethod
    def _presets(*, window: UsageWindow | None, key) -> list[dict]:
        extra = {"key": key.public_id} if key else {}
        return [
            {
                "label": label,
                "query": urlencode({"range": name, **extra}),
                "current": window is not None and window.preset == name,
            }
            for name, (label, _) in PRESETS.items()
        ]


class UsageExportView(OrganizationMixin, View):
    """The usage page's CSV: the API's CSV for the same window, grouped by model and key."""

    required_permission = Perm.USAGE_VIEW

    def get(self, request, org_slug):
        page = f"{reverse('org-usage', args=[org_slug])}?{request.META.get('QUERY_STRING', '')}"
        form = UsageFilterForm(request.GET, organization=self.organization, now=timezone.now())
        if not form.is_valid():
            # The page shows what is wrong with the same query, with its 400.
            return redirect(page)
        window, key = form.cleaned_data["window"], form.cleaned_data["api_key"]
        try:
            rows = usage_rows(
                organization=self.organization,
                start=window.start,
                end=window.end,
                granularity=window.granularity,
                group_by=EXPORT_GROUPS,
                key_id=key.pk if key else None,
            )
        except DomainError as error:
            messages.error(request, error.message)
            return redirect(page)
        name = "-".join(
            part
            for part in (
                "usage",
                org_slug,
                key.public_id if key else "",
                f"{window.first_day:%Y%m%d}",
                f"{window.last_day:%Y%m%d}",
            )
            if part
        )
        return usage_csv_response(rows, group_by=EXPORT_GROUPS, filename=f"{name}.csv")


class RequestLogFilterForm(forms.Form):
    """The request log's query string: key, model, status class, a time range, and the cursor."""

    key = forms.ChoiceField(required=False, label="Key")
    model = forms.ChoiceField(required=False, label="Model")
    status = forms.ChoiceField(
        required=False,
        label="Status",
        choices=[("", "Any status"), ("2xx", "2xx"), ("4xx", "4xx"), ("5xx", "5xx"), ("refused", "Refused")],
    )
    start = forms.DateTimeField(required=False, label="From", widget=forms.TextInput(attrs=ISO_TIME_ATTRS))
    end = forms.DateTimeField(required=False, label="To", widget=forms.TextInput(attrs=ISO_TIME_ATTRS))
    after = forms.CharField(required=False, max_length=80, widget=forms.HiddenInput)

    def __init__(self, *args, organization, now: datetime, **kwargs):
        super().__init__(*args, **kwargs)
        # Only this organization's keys are choices: another's id is refused like a missing one.
        self.keys = {key.public_id: key for key in api_keys_list(organization=organization).order_by("name")}
        self.fields["key"].choices = [("", "Any key")] + [
            (public_id, f"{key.name} ({public_id})") for public_id, key in self.keys.items()
        ]
        models = requestlog.request_log_models(organization=organization, now=now)
        self.fields["model"].choices = [("", "Any model")] + [(model, model) for model in models]

    def clean_end(self):
        end = self.cleaned_data["end"]
        raw = self.data.get("end", "")
        # A bare date ends the range at the end of that day.
        return end + timedelta(days=1) if end and len(raw.strip()) == len("YYYY-MM-DD") else end

    def clean_after(self):
        after = self.cleaned_data["after"]
        try:
            return requestlog.Cursor.decode(after) if after else None
        except ValueError:
            raise forms.ValidationError("This page link is not valid; start from the first page.") from None

    def clean(self):
        data = super().clean()
        data["api_key"] = self.keys.get(data.get("key") or "")
        if data.get("start") and data.get("end") and data["start"] >= data["end"]:
            raise forms.ValidationError("The start must be before the end.")
        return data

    error_messages = UsageFilterForm.error_messages


class RequestLogView(OrganizationMixin, TemplateView):
    """The organization's recent requests, served and refused, newest first."""

    template_name = "usage/requests.html"
    required_permission = Perm.USAGE_VIEW

    def get(self, request, *args, **kwargs):
        now = timezone.now()
        form = RequestLogFilterForm(request.GET, organization=self.organization, now=now)
        # A role that sees usage but not keys (billing) reads each key's name without a link to a 403.
        context = {
            "form": form,
            "days": settings.USAGE_REQUEST_LOG_DAYS,
            "can_open_keys": self.can(Perm.KEYS_VIEW),
        }
        if not form.is_valid():
            return self.render_to_response(
                self.get_context_data(errors=form.error_messages(), rows=[], **context), status=400
            )
        data = form.cleaned_data
        rows, cursor = requestlog.request_log_page(
            organization=self.organization,
            now=now,
            start=data["start"],
            end=data["end"],
            key_id=data["api_key"].pk if data["api_key"] else None,
            model=data["model"],
            status_class=data["status"],
            after=data["after"],
        )
        query = request.GET.copy()
        query.pop("after", None)
        context.update(
            rows=rows,
            currency=plan_for(organization_id=self.organization.pk, period=month_start(now.date())).currency,
            first_url=f"?{query.urlencode()}" if data["after"] else "",
            next_url=f"?{urlencode({**query.dict(), 'after': cursor.encode()})}" if cursor else "",
        )
        return self.render_to_response(self.get_context_data(**context))
