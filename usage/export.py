"""Usage rows as the API and the CSV downloads show them: one shape, one CSV writer.

Each row carries its cost: its token counts priced with the organization's price book, as an
integer in the currency's minor unit, rounded once per row.
"""

import csv
import io
from datetime import datetime

from django.http import HttpResponse

from billing.selectors import usage_costs
from portal.csvsafe import csv_row
from portal.errors import DomainError
from usage import selectors

MAX_ROWS = 10_000


def usage_rows(
    *,
    organization,
    start: datetime,
    end: datetime,
    granularity: str,
    group_by: tuple[str, ...] = (),
    key_id: int | None = None,
    model: str | None = None,
) -> list[dict]:
    """Return one row per period and group, from the rollups; refuse more than ``MAX_ROWS``."""
    query = {
        "organization": organization,
        "start": start,
        "end": end,
        "granularity": granularity,
        "group_by": group_by,
        "key_id": key_id,
        "model": model,
    }
    series = selectors.usage_series(**query)
    if len(series) > MAX_ROWS:
        raise DomainError(f"More than {MAX_ROWS} rows: narrow the range or use day granularity.")
    costs = usage_costs(**query)
    fields = list(selectors.group_fields(granularity=granularity, group_by=group_by))
    return [
        _row(raw, costs.by_group.get(tuple(raw[field] for field in fields), 0), costs.currency)
        for raw in series
    ]


def _row(raw: dict, cost_minor: int, currency: str) -> dict:
    row = {"period": raw["period"]}
    if "group_model" in raw:
        row["model"] = raw["group_model"]
    if "group_key" in raw:
        row["key_id"] = raw["group_key"]
        row["key_name"] = raw["group_key_name"]
    for metric in selectors.METRICS:
        row[metric] = raw[metric] or 0
    row["cost_minor"] = cost_minor
    row["currency"] = currency
    return row


def usage_cost_total(*, organization, start: datetime, end: datetime, key_id=None, model=None) -> dict:
    """Return the window's whole cost, rounded once, and its currency."""
    costs = usage_costs(organization=organization, start=start, end=end, key_id=key_id, model=model)
    return {"cost_minor": costs.by_group.get((), 0), "currency": costs.currency}


def usage_csv_response(
    rows: list[dict], *, group_by: tuple[str, ...], filename: str = "usage.csv"
) -> HttpResponse:
    """Render ``usage_rows`` output as a CSV attachment, columns in a fixed order, text cells
    made safe for spreadsheets."""
    columns = ["period"]
    if "model" in group_by:
        columns.append("model")
    if "key" in group_by:
        columns += ["key_id", "key_name"]
    columns += [*selectors.METRICS, "cost_minor", "currency"]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    for row in rows:
        writer.writerow(
            csv_row(row["period"].isoformat() if column == "period" else row[column] for column in columns)
        )
    response = HttpResponse(buffer.getvalue(), content_type="text/csv")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response
