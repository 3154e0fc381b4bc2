"""Amounts in minor units, as people read them."""

from decimal import Decimal

from django import template

from billing.currency import format_minor, minor_exponent

register = template.Library()


@register.filter
def money(amount_minor, currency: str) -> str:
    """Render ``1234|money:"usd"`` as ``12.34 USD``."""
    return format_minor(int(amount_minor), currency)


@register.filter
def per_mtok(price_minor, currency: str) -> str:
    """Render a price in minor units per million tokens as ``0.125 USD / 1M``, every digit kept."""
    major = Decimal(price_minor).scaleb(-minor_exponent(currency))
    text = f"{major.normalize():f}"
    return f"{text} {currency.upper()} / 1M"
