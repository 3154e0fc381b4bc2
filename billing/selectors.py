"""Reads for billing: the plan an organization is on, its prices, and its usage ready to rate."""

from collections import defaultdict
from datetime import date, datetime

from django.db import connection

from billing.models import ModelPrice, Plan, PlanAssignment, PlanPrice
from billing.rating import Price, PriceBook, Rating, Usage, rate


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


# Sum the hourly rollups between price changes: within one bucket no price changes, so the
# price at the bucket's first hour prices all of it, and 10,000 organizations rate from a few
# rows each instead of one per hour.
_USAGE_SQL = """
    SELECT organization_id, model, min(hour), sum(input_tokens), sum(cached_tokens), sum(output_tokens)
    FROM usage_usagerollup
    WHERE billed_period = %(period)s {organizations}
    GROUP BY organization_id, model, width_bucket(hour, %(changes)s::timestamptz[])
"""


def usage_for_rating(
    *, period: date, changes: list[datetime], organization_ids=None
) -> dict[int, list[Usage]]:
    """Return each organization's usage billed in ``period``, summed between price ``changes``."""
    params = {"period": period, "changes": changes}
    organizations = ""
    if organization_ids is not None:
        organizations = "AND organization_id = ANY(%(organizations)s)"
        params["organizations"] = list(organization_ids)
    usage: dict[int, list[Usage]] = defaultdict(list)
    with connection.cursor() as cursor:
        cursor.execute(_USAGE_SQL.format(organizations=organizations), params)
        for organization_id, model, start, input_tokens, cached, output in cursor.fetchall():
            usage[organization_id].append(
                Usage(
                    model=model,
                    start=start,
                    input_tokens=int(input_tokens),
                    cached_tokens=int(cached),
                    output_tokens=int(output),
                )
            )
    return dict(usage)


def period_ratings(*, period: date, organization_ids) -> dict[int, tuple[Plan, Rating]]:
    """Rate ``period`` for each of ``organization_ids``: its plan and its priced lines."""
    organization_ids = list(organization_ids)
    assigned = plans_for_period(period=period, organization_ids=organization_ids)
    default = plan_default()
    plans = {organization_id: assigned.get(organization_id, default) for organization_id in organization_ids}
    books = price_books({plan.pk: plan for plan in plans.values()}.values())
    changes = sorted({moment for book in books.values() for moment in book.changes()})
    usage = usage_for_rating(period=period, changes=changes, organization_ids=organization_ids)
    return {
        organization_id: (
            plan,
            rate(
                usage=usage.get(organization_id, ()),
                book=books[plan.pk],
                fee_minor=plan.monthly_fee_minor,
                fee_description=f"{plan.name} plan, {period:%B %Y}",
            ),
        )
        for organization_id, plan in plans.items()
    }
