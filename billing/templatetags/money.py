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
    """Render a price in minor units per million tokens as ``1.00 USD / 1M`` or, finer than the
    minor unit, ``0.125 USD / 1M``: every significant digit kept."""
    exponent = minor_exponent(currency)
    major = Decimal(price_minor).scaleb(-exponent)
    shown = max(exponent, -major.normalize().as_tuple().exponent)
    return f"{major:,.{shown}f} {currency.upper()} / 1M"


@register.filter
def micro_money(amount_micro_minor, currency: str) -> str:
    """Render an amount in millionths of a minor unit (one request's cost) with every significant
    digit: ``1234|micro_money:"usd"`` as ``0.00001234 USD``, zero as ``0.00 USD``."""
    exponent = minor_exponent(currency)
    major = Decimal(int(amount_micro_minor)).scaleb(-6 - exponent)
    shown = max(exponent, -major.normalize().as_tuple().exponent)
    return f"{major:,.{shown}f} {currency.upper()}"
