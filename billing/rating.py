"""Rating: usage and prices in, priced invoice lines out.

Pure functions: no database, no clock, no Stripe. Amounts are ``Decimal`` throughout and each
line is rounded once, half-up, to the currency's minor unit (prices are already in minor units per
million tokens, so a line rounds to a whole number of minor units). The total is the sum of the
lines. Token counts are the only input: an event's cost field is never read here.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

MILLION = Decimal(1_000_000)
TOKEN_KINDS = ("input", "cached_input", "output")
TOKEN_LABELS = {"input": "input tokens", "cached_input": "cached input tokens", "output": "output tokens"}


@dataclass(frozen=True)
class Price:
    """A price version: minor units per million tokens of each kind, from ``effective_from`` on."""

    effective_from: datetime
    input: Decimal
    cached_input: Decimal
    output: Decimal

    def per_mtok(self, kind: str) -> Decimal:
        return getattr(self, kind)


@dataclass
class PriceBook:
    """The prices one plan pays: its own versions of a model, else the global versions."""

    plan: Mapping[str, list[Price]] = field(default_factory=dict)
    base: Mapping[str, list[Price]] = field(default_factory=dict)

    def __post_init__(self):
        self.plan = {model: sorted(versions, key=_start) for model, versions in self.plan.items()}
        self.base = {model: sorted(versions, key=_start) for model, versions in self.base.items()}

    def at(self, model: str, moment: datetime) -> Price | None:
        """Return the price of ``model`` in effect at ``moment``, or None when it has none."""
        return _in_effect(self.plan.get(model), moment) or _in_effect(self.base.get(model), moment)

    def changes(self) -> list[datetime]:
        """Every instant at which some price changes (for grouping usage between changes)."""
        return sorted(
            {p.effective_from for versions in (*self.plan.values(), *self.base.values()) for p in versions}
        )


def _start(price: Price) -> datetime:
    return price.effective_from


def _in_effect(versions: list[Price] | None, moment: datetime) -> Price | None:
    if not versions:
        return None
    index = bisect.bisect_right([p.effective_from for p in versions], moment)
    return versions[index - 1] if index else None


@dataclass(frozen=True)
class Usage:
    """Tokens one organization used of one model from ``start`` on: in an hour, or in a span in
    which no price changes, priced at ``start`` (its first hour or the change that opens it).
    ``input_tokens`` includes the cached ones, as OpenAI counts them."""

    model: str
    start: datetime
    input_tokens: int
    cached_tokens: int
    output_tokens: int

    def tokens(self, kind: str) -> int:
        if kind == "input":
            return self.input_tokens - self.cached_tokens
        if kind == "cached_input":
            return self.cached_tokens
        return self.output_tokens


@dataclass(frozen=True)
class Line:
    kind: str  # "usage" or "fee"
    model: str
    tokens: str  # one of TOKEN_KINDS, empty for a fee
    quantity: int
    unit_price: Decimal | None  # None when the price changed within the period
    amount_minor: int
    description: str


@dataclass(frozen=True)
class Rating:
    lines: tuple[Line, ...]

    @property
    def total_minor(self) -> int:
        return sum(line.amount_minor for line in self.lines)


def round_minor(amount: Decimal) -> int:
    """Round an exact amount in minor units once, half-up (half a cent and more goes up)."""
    return int(amount.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def exact_amount(tokens: int, per_mtok: Decimal) -> Decimal:
    """Price ``tokens`` at ``per_mtok`` minor units per million, exactly (rounding comes later)."""
    return tokens * per_mtok / MILLION


def usage_amount(usage: Usage, book: PriceBook) -> Decimal:
    """Price every token kind of one usage slice at its first hour's price, exactly."""
    price = book.at(usage.model, usage.start)
    if price is None:
        return Decimal(0)
    return sum((exact_amount(usage.tokens(kind), price.per_mtok(kind)) for kind in TOKEN_KINDS), Decimal(0))


def rate(
    *, usage: Iterable[Usage], book: PriceBook, fee_minor: int, fee_description: str = "Platform fee"
) -> Rating:
    """Price one organization's usage for one period: a line per model and token kind, then the fee.

    A model without any price is rated at zero (the edge serves it free too) and says so.
    """
    exact: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    quantity: dict[tuple[str, str], int] = defaultdict(int)
    unit: dict[tuple[str, str], set[Decimal]] = defaultdict(set)
    unpriced: set[tuple[str, str]] = set()
    for slice_ in usage:
        price = book.at(slice_.model, slice_.start)
        for kind in TOKEN_KINDS:
            tokens = slice_.tokens(kind)
            if not tokens:
                continue
            per_mtok = price.per_mtok(kind) if price else Decimal(0)
            line = (slice_.model, kind)
            exact[line] += exact_amount(tokens, per_mtok)
            quantity[line] += tokens
            unit[line].add(per_mtok)
            if price is None:
                unpriced.add(line)
    lines = []
    for model, kind in sorted(exact, key=lambda line: (line[0], TOKEN_KINDS.index(line[1]))):
        prices = unit[(model, kind)]
        single = next(iter(prices)) if len(prices) == 1 else None
        count = quantity[(model, kind)]
        description = f"{model} · {count:,} {TOKEN_LABELS[kind]}"
        if (model, kind) in unpriced:
            description += " (no price set)"
        lines.append(
            Line(
                kind="usage",
                model=model,
                tokens=kind,
                quantity=count,
                unit_price=single,
                amount_minor=round_minor(exact[(model, kind)]),
                description=description,
            )
        )
    if fee_minor:
        lines.append(Line("fee", "", "", 1, None, fee_minor, fee_description))
    return Rating(tuple(lines))
