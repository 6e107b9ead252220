"""What a step may hand the engine to store: the value later steps see is the value PostgreSQL gives back."""

from __future__ import annotations

import json

import pytest
from django.db import connection

from orchestrator.services.results import as_postgresql_number, check_result

pytestmark = pytest.mark.django_db

# Floats of every size Python writes with and without an exponent, negatives and fractions among them.
NUMBERS = [0.0, -0.0, 1.5, 123456.0, 1e15, 1e16, 1.5e16, -2.5e17, 1.5e300, -1.7976931348623157e308, 1e-5, 5e-324]


def _through_jsonb(value: dict) -> dict:
    """``value`` stored as PostgreSQL's jsonb and read back, as a step's result column is."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT %s::jsonb", [json.dumps(value)])
        text = cursor.fetchone()[0]
    return text if isinstance(text, dict) else json.loads(text)


@pytest.mark.parametrize("number", NUMBERS)
def test_a_checked_result_is_what_postgresql_gives_back_for_every_size_of_float(number):
    # Given a handler's result holding a float, large or small
    result = {"n": number, "nested": [{"n": number}]}

    # When the engine checks it, and separately the database stores and returns it
    checked = check_result(result)
    stored = _through_jsonb(result)

    # Then the two agree in value and in type: a later step sees what the database holds
    assert checked == stored
    assert type(checked["n"]) is type(stored["n"])
    assert type(checked["nested"][0]["n"]) is type(stored["nested"][0]["n"])


def test_a_float_written_with_a_positive_exponent_comes_back_as_postgresqls_integer():
    # Given the text Python writes for floats of 1e16 and more
    # When it is read as PostgreSQL reads it back
    # Then it is the integer with those digits, not the float (1.5e300 is not even equal to that integer)
    assert as_postgresql_number("1e+16") == 10**16
    assert type(as_postgresql_number("1e+16")) is int
    assert as_postgresql_number("1.5e+300") == 15 * 10**299
    assert as_postgresql_number("-2.5e+17") == -25 * 10**16
    assert as_postgresql_number("1e-05") == 1e-05
    assert type(as_postgresql_number("2.5")) is float
