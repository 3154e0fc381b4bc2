"""Reads for billing: the plan an organization is on, its prices, and its usage ready to rate."""

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from itertools import groupby
from operator import itemgetter

from django.db import connection
from django.db.models import QuerySet
from django.utils import timezone

from billing import stripe_adapter
from billing.models import BillingDetails, Customer, Invoice, ModelPrice, Plan, PlanAssignment, PlanPrice
from billing.rating import Price, PriceBook, Rating, Usage, rate, round_minor, usage_amount
from portal.errors import DomainError
from usage import selectors as usage_selectors
from usage.partitions import add_months, month_start


def plan_default() -> Plan:
    """Return the plan of organizations never given one (free, in dollars, unless staff change it)."""
    plan, _ = Plan.objects.get_or_create(is_default=True, defaults={"name": "Standard"})
    return plan


def plans_for_period(*, period: date, organization_ids=None) -> dict[int, Plan]:
    """Return each organization's plan for ``period``; organizations absent here are on the default.

    The plan for a period is the latest assignment made for that period or an earlier one.
    """
    assignments = PlanAssignment.objects.filter(period__lte=period).select_related("plan").order_by("period")
    if organization_ids is not None:
        assignments = assignments.filter(organization_id__in=list(organization_ids))
    return {assignment.organization_id: assignment.plan for assignment in assignments}


def plan_for(*, organization_id: int, period: date) -> Plan:
    return (
        plans_for_period(period=period, organization_ids=[organization_id]).get(organization_id)
        or plan_default()
    )


def _versions(rows) -> dict[str, list[Price]]:
    versions: dict[str, list[Price]] = defaultdict(list)
    for row in rows:
        versions[row.model].append(
            Price(
                effective_from=row.effective_from,
                input=row.input_per_mtok_minor,
                cached_input=row.cached_input_per_mtok_minor,
                output=row.output_per_mtok_minor,
            )
        )
    return dict(versions)


def price_books(plans) -> dict[int, PriceBook]:
    """Return the price book of each plan: its own prices, else the global ones in its currency."""
    plans = list(plans)
    base_by_currency = {
        currency: _versions(ModelPrice.objects.filter(currency=currency))
        for currency in {plan.currency for plan in plans}
    }
    own = defaultdict(list)
    for row in PlanPrice.objects.filter(plan__in=plans):
        own[row.plan_id].append(row)
    return {
        plan.pk: PriceBook(plan=_versions(own[plan.pk]), base=base_by_currency[plan.currency])
        for plan in plans
    }


# Sum the hourly rollups between price changes: within one span no price changes, so the
# price at the change that opens the span prices all of it, and 10,000 organizations rate from
# a few rows each instead of one per hour. The span's number, not its first hour, is returned:
# one aggregate less over every hourly row. In organization order, so that a whole month can be
# read as a stream and rated one organization after another.
_USAGE_SQL = """
    SELECT organization_id, model, width_bucket(hour, %(changes)s::timestamptz[]) AS span,
        sum(input_tokens), sum(cached_tokens), sum(output_tokens)
    FROM usage_usagerollup
    WHERE billed_period = %(period)s {organizations}
    GROUP BY organization_id, model, span
    ORDER BY organization_id
"""
# Usage before the first price change is priced at no price whatever its hour.
BEFORE_ANY_PRICE = datetime.min.replace(tzinfo=UTC)
FETCH = 5_000
# A whole month's summed rows (10,000 organizations × 20 models × price spans: 400,000) take
# about 210 MB of hash table. With less the aggregate spills most of the month to disk, and the
# planner, which expects far more groups, sorts every hourly row instead.
ONE_PASS_WORK_MEM = "256MB"


def _usage_query(cursor, *, period: date, changes: list[datetime], organization_ids=None) -> None:
    """Run the usage query on ``cursor``, for ``organization_ids`` or, when None, everyone."""
    params = {"period": period, "changes": changes}
    organizations = ""
    if organization_ids is not None:
        organizations = "AND organization_id = ANY(%(organizations)s)"
        params["organizations"] = list(organization_ids)
    cursor.execute(_USAGE_SQL.format(organizations=organizations), params)


def _usage_rows(cursor, changes: list[datetime]) -> Iterator[tuple[int, Usage]]:
    """Yield the usage query's rows as (organization id, ``Usage``), in organization order."""
    while rows := cursor.fetchmany(FETCH):
        for organization_id, model, span, input_tokens, cached, output in rows:
            yield (
                organization_id,
                Usage(
                    model=model,
                    start=changes[span - 1] if span else BEFORE_ANY_PRICE,
                    input_tokens=int(input_tokens),
                    cached_tokens=int(cached),
                    output_tokens=int(output),
                ),
            )


def usage_for_rating(*, period: date, changes: list[datetime], organization_ids) -> dict[int, list[Usage]]:
    """Return the usage of ``organization_ids`` billed in ``period``, summed between price ``changes``."""
    usage: dict[int, list[Usage]] = defaultdict(list)
    with connection.cursor() as cursor:
        _usage_query(cursor, period=period, changes=changes, organization_ids=organization_ids)
        for organization_id, slice_ in _usage_rows(cursor, changes):
            usage[organization_id].append(slice_)
    return dict(usage)


def usage_by_organization(*, period: date, changes: list[datetime]) -> Iterator[tuple[int, list[Usage]]]:
    """Yield every organization's usage billed in ``period``, summed between price ``changes``,
    in organization order.

    One pass over the whole month (a sequential scan and a hash aggregate, not an index scan
    per batch of organizations), read through a server-side cursor so that only a few thousand
    rows are in memory here at a time. The cursor's query is planned and its aggregate sized
    when it is declared, so ``work_mem`` is raised for that statement only.
    """
    with connection.chunked_cursor() as cursor:
        with connection.cursor() as session:
            session.execute(f"SET work_mem = '{ONE_PASS_WORK_MEM}'")
            try:
                _usage_query(cursor, period=period, changes=changes)
            finally:
                session.execute("RESET work_mem")
        for organization_id, rows in groupby(_usage_rows(cursor, changes), key=itemgetter(0)):
            yield organization_id, [slice_ for _organization_id, slice_ in rows]


def _plans_and_books(*, period: date, organization_ids: list[int]):
    """Return each organization's plan for ``period``, the plans' price books and every price change."""
    assigned = plans_for_period(period=period, organization_ids=organization_ids)
    default = plan_default()
    plans = {organization_id: assigned.get(organization_id, default) for organization_id in organization_ids}
    books = price_books({plan.pk: plan for plan in plans.values()}.values())
    changes = sorted({moment for book in books.values() for moment in book.changes()})
    return plans, books, changes


def _rating(*, period: date, plan: Plan, book: PriceBook, usage) -> Rating:
    return rate(
        usage=usage,
        book=book,
        fee_minor=plan.monthly_fee_minor,
        fee_description=f"{plan.name} plan, {period:%B %Y}",
    )


def period_ratings(*, period: date, organization_ids) -> dict[int, tuple[Plan, Rating]]:
    """Rate ``period`` for each of ``organization_ids``: its plan and its priced lines."""
    plans, books, changes = _plans_and_books(period=period, organization_ids=list(organization_ids))
    usage = usage_for_rating(period=period, changes=changes, organization_ids=list(plans))
    return {
        organization_id: (
            plan,
            _rating(period=period, plan=plan, book=books[plan.pk], usage=usage.get(organization_id, ())),
        )
        for organization_id, plan in plans.items()
    }


def period_ratings_one_pass(*, period: date, organization_ids) -> Iterator[tuple[int, Plan, Rating]]:
    """Rate ``period`` for each of ``organization_ids`` from one pass over the month's usage; yield
    (organization id, plan, rating) in ascending organization order.

    For many organizations at once (closing a month): the month's usage is read once, as a
    stream, instead of once per batch; the usage of organizations not asked for is passed over.
    """
    plans, books, changes = _plans_and_books(period=period, organization_ids=sorted(set(organization_ids)))
    if not plans:
        return
    usage = usage_by_organization(period=period, changes=changes)
    try:
        pending = next(usage, None)
        for organization_id, plan in plans.items():
            while pending is not None and pending[0] < organization_id:
                pending = next(usage, None)
            slices = pending[1] if pending is not None and pending[0] == organization_id else ()
            yield (
                organization_id,
                plan,
                _rating(period=period, plan=plan, book=books[plan.pk], usage=slices),
            )
    finally:
        usage.close()


@dataclass(frozen=True)
class Upcoming:
    """The current month rated so far: what its invoice would say if it closed now."""

    period: date
    start: datetime
    end: datetime
    plan: Plan
    rating: Rating


def _month_bounds(period: date) -> tuple[datetime, datetime]:
    return (
        datetime.combine(period, time.min, tzinfo=UTC),
        datetime.combine(add_months(period, 1), time.min, tzinfo=UTC),
    )


def current_period(now: datetime) -> date:
    """Return the billing month ``now`` falls in: the UTC one, as invoices count months."""
    return month_start(now.astimezone(UTC).date())


def billing_upcoming(*, organization, now: datetime | None = None) -> Upcoming:
    """Rate ``organization``'s open month so far with its plan, as the close will."""
    period = current_period(now or timezone.now())
    plan, rating = period_ratings(period=period, organization_ids=[organization.pk])[organization.pk]
    start, end = _month_bounds(period)
    return Upcoming(period=period, start=start, end=end, plan=plan, rating=rating)


def rated_lines(rating: Rating) -> list[dict]:
    """Return rated lines under the names an invoice line has, numbered as the close numbers them."""
    return [
        {
            "position": position,
            "kind": line.kind,
            "model": line.model,
            "tokens": line.tokens,
            "quantity": line.quantity,
            "unit_price_per_mtok_minor": line.unit_price,
            "amount_minor": line.amount_minor,
            "description": line.description,
        }
        for position, line in enumerate(rating.lines, start=1)
    ]


def amounts_by_model(rating: Rating) -> list[dict]:
    """Sum the rated usage lines per model, in the lines' order."""
    totals: dict[str, int] = {}
    for line in rating.lines:
        if line.kind == "usage":
            totals[line.model] = totals.get(line.model, 0) + line.amount_minor
    return [{"model": model, "amount_minor": amount} for model, amount in totals.items()]


def invoices_list(*, organization) -> QuerySet[Invoice]:
    """Return ``organization``'s invoices, newest first, with their plan and lines."""
    return (
        Invoice.objects.filter(organization=organization)
        .select_related("plan")
        .prefetch_related("lines")
        .order_by("-public_id")
    )


def invoice_get(*, organization, invoice_id: str) -> Invoice | None:
    """Return one of ``organization``'s invoices by its public id; another's is None, like none."""
    return invoices_list(organization=organization).filter(public_id=invoice_id).first()


@dataclass(frozen=True)
class SavedCard:
    """A card on the organization's Stripe customer, as the console and the API show it."""

    id: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int
    is_default: bool


def cards_list(*, organization) -> list[SavedCard]:
    """Return the organization's cards from Stripe, oldest first; none before it has a customer."""
    customer = Customer.objects.filter(organization=organization).first()
    if customer is None:
        return []
    default = stripe_adapter.customer_default_payment_method(customer=customer.stripe_customer_id)
    return [
        SavedCard(**asdict(card), is_default=card.id == default)
        for card in stripe_adapter.cards_list(customer=customer.stripe_customer_id)
    ]


def billing_details_get(*, organization) -> BillingDetails:
    """Return the organization's billing details; an unsaved empty one when none were given."""
    return BillingDetails.objects.filter(organization=organization).first() or BillingDetails(
        organization=organization, updated_at=None
    )


@dataclass(frozen=True)
class UsageCosts:
    """Usage priced per row group (the keys are ``usage.selectors.group_fields`` values)."""

    currency: str
    by_group: dict[tuple, int]


def usage_costs(
    *,
    organization,
    start: datetime,
    end: datetime,
    granularity: str | None = None,
    group_by: tuple[str, ...] = (),
    key_id: int | None = None,
    model: str | None = None,
) -> UsageCosts:
    """Price the window's usage per row group from its token counts, rounded once per group.

    Each rollup is priced as its invoice prices it: with the plan of the month that carries it
    and the price in effect at its hour. Rows of different currencies cannot be summed, so a
    window whose months are on plans of different currencies is refused.
    """
    window = {"organization": organization, "start": start, "end": end, "key_id": key_id, "model": model}
    plans = {
        period: plan_for(organization_id=organization.pk, period=period)
        for period in usage_selectors.usage_billed_periods(**window)
    }
    if not plans:
        current = month_start(timezone.now().astimezone(UTC).date())
        return UsageCosts(
            currency=plan_for(organization_id=organization.pk, period=current).currency, by_group={}
        )
    currencies = {plan.currency for plan in plans.values()}
    if len(currencies) > 1:
        raise DomainError(
            "This range spans plans in different currencies; choose a range within one of them.",
            field="start",
        )
    books = price_books({plan.pk: plan for plan in plans.values()}.values())
    changes = sorted({moment for book in books.values() for moment in book.changes()})
    fields = list(usage_selectors.group_fields(granularity=granularity, group_by=group_by))
    exact: dict[tuple, Decimal] = defaultdict(Decimal)
    for row in usage_selectors.usage_token_slices(
        changes=changes, granularity=granularity, group_by=group_by, **window
    ):
        usage = Usage(
            model=row["model"],
            start=row["first_hour"],
            input_tokens=row["input_tokens"],
            cached_tokens=row["cached_tokens"],
            output_tokens=row["output_tokens"],
        )
        exact[tuple(row[field] for field in fields)] += usage_amount(
            usage, books[plans[row["billed_period"]].pk]
        )
    return UsageCosts(
        currency=currencies.pop(),
        by_group={group: round_minor(amount) for group, amount in exact.items()},
    )


def month_to_date_costs(*, organization, now: datetime, group_by: tuple[str, ...] = ()) -> UsageCosts:
    """Price the usage of ``now``'s UTC month so far per row group, as ``usage_costs`` prices
    any window: the one figure the dashboard, the key list and the key page show."""
    start, end = _month_bounds(current_period(now))
    return usage_costs(organization=organization, start=start, end=end, group_by=group_by)


# The forecast's run rate: the average daily cost of this many complete UTC days before today.
FORECAST_DAYS = 7
DAY = timedelta(days=1)


@dataclass(frozen=True)
class Forecast:
    """The month's usage cost at its end, forecast from the recent run rate.

    ``cost_minor`` is the month to date plus ``recent_minor`` (the cost of the last
    ``FORECAST_DAYS`` complete UTC days) divided by ``FORECAST_DAYS`` times ``days_left``, the time
    left in the month in days, rounded once.
    """

    month_to_date_minor: int
    recent_minor: int
    recent_start: date
    recent_end: date
    days_left: Decimal
    currency: str

    @property
    def daily_minor(self) -> Decimal:
        return Decimal(self.recent_minor) / FORECAST_DAYS

    @property
    def cost_minor(self) -> int:
        return self.month_to_date_minor + round_minor(self.daily_minor * self.days_left)


def usage_forecast(*, organization, now: datetime, month_to_date: UsageCosts) -> Forecast:
    """Forecast ``organization``'s usage cost at the end of ``now``'s month from the month to date
    (``month_to_date_costs`` without groups) and the last ``FORECAST_DAYS`` complete UTC days.

    Days without usage count as zero. A run rate in another currency than the month's (a plan
    changed currency at the month's start) cannot be added to it and is refused.
    """
    today = datetime.combine(now.astimezone(UTC).date(), time.min, tzinfo=UTC)
    recent = usage_costs(organization=organization, start=today - FORECAST_DAYS * DAY, end=today)
    if recent.by_group and recent.currency != month_to_date.currency:
        raise DomainError("The last days were billed in another currency: no forecast this month.")
    _start, month_end = _month_bounds(current_period(now))
    return Forecast(
        month_to_date_minor=month_to_date.by_group.get((), 0),
        recent_minor=recent.by_group.get((), 0),
        recent_start=(today - FORECAST_DAYS * DAY).date(),
        recent_end=(today - DAY).date(),
        # Exact to the microsecond: a timedelta divided by a timedelta would go through a float.
        days_left=Decimal((month_end - now) // timedelta(microseconds=1))
        / (DAY // timedelta(microseconds=1)),
        currency=month_to_date.currency,
    )
