"""The CSV cell rule every export applies (OWASP's rule against formula injection)."""

from decimal import Decimal

import pytest

from portal.csvsafe import csv_cell, csv_row


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        ('=HYPERLINK("http://evil","x")', '\'=HYPERLINK("http://evil","x")'),
        ("+1+cmd|' /C calc'!A0", "'+1+cmd|' /C calc'!A0"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1:A9)", "'@SUM(A1:A9)"),
        ("\t=1+1", "'\t=1+1"),
        ("\r=1+1", "'\r=1+1"),
        ("-5", "'-5"),
        ("=", "'="),
    ],
)
def test_a_string_beginning_with_a_formula_trigger_gets_a_leading_quote(value, cell):
    assert csv_cell(value) == cell


@pytest.mark.parametrize(
    "value",
    ["", "Mozilla/5.0 (X11; Linux x86_64)", "curl/8.5.0 -k", "a=b", "'=already quoted", " =1+1", "key_01jx"],
)
def test_a_string_not_beginning_with_a_trigger_is_untouched(value):
    assert csv_cell(value) == value


@pytest.mark.parametrize("value", [0, 42, -5, Decimal("-1.50"), Decimal("3"), -2.5, None, True])
def test_numbers_and_other_values_the_code_writes_pass_through_as_they_are(value):
    assert csv_cell(value) is value


def test_a_row_applies_the_rule_to_each_cell():
    assert csv_row(iter(["=1", -1, "ok", "@x", Decimal("-0.01")])) == [
        "'=1",
        -1,
        "ok",
        "'@x",
        Decimal("-0.01"),
    ]
