"""Rating is arithmetic over token counts and price versions: a line per model and token kind,
each rounded once, half-up, and a total that is the sum of its lines."""

import random
from datetime import UTC, datetime
from decimal import Decimal

from billing.currency import format_minor, minor_exponent
from billing.rating import Line, Price, PriceBook, Usage, rate, round_minor

NOV = datetime(2026, 11, 1, tzinfo=UTC)
MID = datetime(2026, 11, 16, 0, tzinfo=UTC)


def price(start, input_, output, cached=None) -> Price:
    cached = input_ if cached is None else cached
    return Price(
        effective_from=start, input=Decimal(input_), cached_input=Decimal(cached), output=Decimal(output)
    )


def usage(model, start, input_=0, cached=0, output=0) -> Usage:
    return Usage(model=model, start=start, input_tokens=input_, cached_tokens=cached, output_tokens=output)


def test_each_hour_is_priced_with_the_version_in_effect_and_the_line_rounds_once():
    book = PriceBook(base={"m": [price(NOV, "100", "400"), price(MID, "200", "800")]})
    rating = rate(
        usage=[
            usage("m", datetime(2026, 11, 15, 23, tzinfo=UTC), input_=1_000_000, output=500_000),
            usage("m", MID, input_=1_000_000, output=250_000),
        ],
        book=book,
        fee_minor=0,
    )
    # input: 1M x 100 + 1M x 200 = 300; output: 0.5M x 400 + 0.25M x 800 = 400.
    assert rating.lines == (
        Line("usage", "m", "input", 2_000_000, None, 300, "m · 2,000,000 input tokens"),
        Line("usage", "m", "output", 750_000, None, 400, "m · 750,000 output tokens"),
    )
    assert rating.total_minor == 700


def test_cached_tokens_are_their_own_line_and_leave_the_input_line():
    book = PriceBook(base={"m": [price(NOV, "300", "600", cached="150")]})
    rating = rate(usage=[usage("m", NOV, input_=1_000_000, cached=400_000, output=0)], book=book, fee_minor=0)
    assert [(line.tokens, line.quantity, line.unit_price, line.amount_minor) for line in rating.lines] == [
        ("input", 600_000, Decimal("300"), 180),
        ("cached_input", 400_000, Decimal("150"), 60),
    ]


def test_no_usage_and_no_fee_rates_to_nothing():
    rating = rate(usage=[], book=PriceBook(), fee_minor=0)
    assert rating.lines == ()
    assert rating.total_minor == 0


def test_a_fee_only_period_has_the_fee_line():
    rating = rate(usage=[], book=PriceBook(), fee_minor=4900, fee_description="Pro plan, November 2026")
    assert rating.lines == (Line("fee", "", "", 1, None, 4900, "Pro plan, November 2026"),)
    assert rating.total_minor == 4900


def test_half_a_minor_unit_rounds_up_once_per_line_not_per_hour():
    book = PriceBook(base={"m": [price(NOV, "1", "3")]})
    # 500,000 tokens at 1 per Mtok is exactly 0.5: half-up gives 1.
    assert rate(usage=[usage("m", NOV, input_=500_000)], book=book, fee_minor=0).total_minor == 1
    # 499,999 is 0.499999: down to 0.
    assert rate(usage=[usage("m", NOV, input_=499_999)], book=book, fee_minor=0).total_minor == 0
    # Ten hours of 0.3 each: rounding each hour would give 0; the line is 3.0 -> 3.
    hours = [usage("m", datetime(2026, 11, 2, h, tzinfo=UTC), input_=300_000) for h in range(10)]
    assert rate(usage=hours, book=book, fee_minor=0).total_minor == 3


def test_plan_prices_override_the_global_ones_from_their_start():
    book = PriceBook(plan={"m": [price(MID, "50", "50")]}, base={"m": [price(NOV, "100", "100")]})
    assert book.at("m", NOV).input == Decimal("100")
    assert book.at("m", MID).input == Decimal("50")
    assert book.at("other", MID) is None


def test_a_model_without_a_price_rates_at_zero_and_says_so():
    rating = rate(usage=[usage("free", NOV, input_=10, output=5)], book=PriceBook(), fee_minor=0)
    assert [line.description for line in rating.lines] == [
        "free · 10 input tokens (no price set)",
        "free · 5 output tokens (no price set)",
    ]
    assert rating.total_minor == 0


def test_a_currency_without_a_minor_unit_rounds_to_whole_units():
    assert minor_exponent("jpy") == 0
    assert minor_exponent("usd") == 2
    assert minor_exponent("kwd") == 3
    # Prices are in the currency's minor unit, the yen itself: 1,500,000 tokens at 33 yen/Mtok = 49.5 -> 50.
    book = PriceBook(base={"m": [price(NOV, "33", "0")]})
    assert rate(usage=[usage("m", NOV, input_=1_500_000)], book=book, fee_minor=0).total_minor == 50
    assert format_minor(1234, "jpy") == "1,234 JPY"
    assert format_minor(1234, "usd") == "12.34 USD"
    assert format_minor(-5, "usd") == "-0.05 USD"


def test_the_total_is_always_the_sum_of_the_lines_and_each_line_is_its_exact_amount_rounded_once():
    generator = random.Random(20261204)
    for _ in range(200):
        models = [f"m{i}" for i in range(generator.randint(1, 4))]
        versions = {
            model: [
                price(
                    datetime(2026, 11, day, hour, tzinfo=UTC),
                    *(str(generator.randint(0, 10**6) / 1000) for _ in "io"),
                )
                for day, hour in {(generator.randint(1, 28), generator.randint(0, 23)) for _ in range(3)}
            ]
            for model in models
        }
        book = PriceBook(base=versions)
        hours = []
        for _ in range(generator.randint(0, 40)):
            input_ = generator.randint(0, 10**7)
            hours.append(
                usage(
                    generator.choice(models),
                    datetime(2026, 11, generator.randint(1, 30), generator.randint(0, 23), tzinfo=UTC),
                    input_=input_,
                    cached=generator.randint(0, input_),
                    output=generator.randint(0, 10**6),
                )
            )
        fee = generator.choice([0, 999])
        rating = rate(usage=hours, book=book, fee_minor=fee)
        assert rating.total_minor == sum(line.amount_minor for line in rating.lines)
        for line in rating.lines:
            if line.kind == "fee":
                assert line.amount_minor == fee
                continue
            exact = Decimal(0)
            for hour in hours:
                if hour.model == line.model:
                    in_effect = book.at(hour.model, hour.start)
                    per_mtok = in_effect.per_mtok(line.tokens) if in_effect else Decimal(0)
                    exact += hour.tokens(line.tokens) * per_mtok / Decimal(1_000_000)
            assert line.amount_minor == round_minor(exact)
