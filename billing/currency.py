"""Currencies: how many decimals a minor unit has, and how an amount in minor units reads."""

from decimal import Decimal

# ISO 4217 currencies whose minor unit is not 1/100 (Stripe's zero-decimal list and the
# three-decimal currencies). Every other currency has cents.
_EXPONENTS = {
    **dict.fromkeys(
        [
            "bif",
            "clp",
            "djf",
            "gnf",
            "jpy",
            "kmf",
            "krw",
            "mga",
            "pyg",
            "rwf",
            "ugx",
            "vnd",
            "vuv",
            "xaf",
            "xof",
            "xpf",
        ],
        0,
    ),
    **dict.fromkeys(["bhd", "jod", "kwd", "omr", "tnd"], 3),
}


def minor_exponent(currency: str) -> int:
    """Return the number of decimals between the currency's major and minor unit."""
    return _EXPONENTS.get(currency.lower(), 2)


def format_minor(amount_minor: int, currency: str) -> str:
    """Render ``1234`` usd as ``12.34 USD`` and ``1234`` jpy as ``1,234 JPY``."""
    exponent = minor_exponent(currency)
    major = Decimal(amount_minor).scaleb(-exponent)
    return f"{major:,.{exponent}f} {currency.upper()}"
