"""The one rule every CSV export applies to its cells, so that a spreadsheet shows them and never runs them."""

from collections.abc import Iterable

# OWASP "CSV Injection": Excel, LibreOffice and Google Sheets read a cell that begins with one
# of these as a formula (``=HYPERLINK(...)`` in a user agent, a key or model name); a leading
# single quote makes the spreadsheet show it as text.
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value):
    """Return ``value`` for a CSV cell: a string that begins with a formula trigger gets a
    leading ``'``; anything else, numbers included, is returned as it is.

    Only strings are touched, so a number the code writes stays a number, negative or not;
    a string is text from somewhere else, however numeric it looks.
    """
    if isinstance(value, str) and value.startswith(FORMULA_TRIGGERS):
        return f"'{value}"
    return value


def csv_row(values: Iterable) -> list:
    """Return one CSV row with ``csv_cell`` applied to every cell."""
    return [csv_cell(value) for value in values]
