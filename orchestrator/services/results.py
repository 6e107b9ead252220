"""What a step may hand the engine to store: strict JSON that PostgreSQL accepts, and error text it can hold.

A handler's result goes into three JSON columns (the step's result, the instance data, the audit payload) in the
transaction that records the step. A value PostgreSQL or Python's JSON encoder refuses there would abort that
transaction after the handler's side effect happened, so the result is checked first, in the worker, with no
database round trip (``steps._run_handler``). The rule (docs/architecture.md, "A step whose outcome cannot be
recorded") is: dicts with string keys, lists (tuples count as lists), strings, integers, finite floats, booleans
and None; no NUL character and no lone surrogate in any string or key (PostgreSQL text cannot hold them); at most
``BATON_MAX_RESULT_BYTES`` bytes of JSON, nested no deeper than ``MAX_DEPTH`` levels.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import Any

from django.conf import settings

# A fixed bound, far below what Python's JSON encoder can follow (its recursion limit, about 1000 levels less the
# caller's stack): the result is encoded again by every later step, by the audit trail and by a page rendering it
# from a deep template stack, and a value the worker could just encode made the instance page fail. A cycle is
# refused too.
MAX_DEPTH = 200

# What a handler should return instead of a value JSON cannot hold, by type name.
HINTS = {
    "datetime": "return value.isoformat()",
    "date": "return value.isoformat()",
    "time": "return value.isoformat()",
    "timedelta": "return value.total_seconds()",
    "Decimal": "return str(value)",
    "UUID": "return str(value)",
    "set": "return a sorted list",
    "frozenset": "return a sorted list",
    "bytes": "decode it, or return base64 text",
    "bytearray": "decode it, or return base64 text",
}


def check_result(value: dict[str, Any]) -> dict[str, Any]:
    """Return ``value`` (a handler's result dict) as it will be stored, or raise if it cannot be stored exactly.

    Raises ``TypeError`` for a value or key of a type JSON cannot hold (a datetime, a set, a Decimal, bytes, an
    integer key) and ``ValueError`` for NaN or Infinity, a NUL or lone surrogate in a string or key, nesting the
    encoder cannot follow (a cycle included) or more than ``BATON_MAX_RESULT_BYTES`` bytes of JSON. The message
    names the offending place (``result['items'][2]``). The value returned is the JSON round trip (tuples become
    lists), so what later steps see is what the database holds.

    CPU only. The common case costs one ``json.dumps``, one ``json.loads`` and a comparison, all in C (about 5 us
    for a small result, 0.1 ms for a hundred rows); the walk over the value in Python runs only when one of them
    finds something, to name the place.
    """
    stored, size = stored_and_size(value)
    limit = settings.BATON_MAX_RESULT_BYTES
    if size > limit:
        raise ValueError(f"result is {size} bytes of JSON, more than BATON_MAX_RESULT_BYTES ({limit})")
    return stored


def stored_and_size(value: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """:func:`check_result` but for the size: ``value`` as it will be stored, and its size in bytes of JSON as the
    engine measures it against ``BATON_MAX_RESULT_BYTES``. For a caller that says the size its own way (the
    console's data editor). Raises what :func:`check_result` raises for anything else."""
    try:
        encoded = json.dumps(value, ensure_ascii=False, allow_nan=False)
        stored = json.loads(encoded, parse_float=as_postgresql_number)
        # The encoder escapes NUL as \u0000 and turns int keys into strings without a word; nesting deeper than
        # MAX_DEPTH needs more brackets than that (a cheap bound in C; strings' brackets only make it look closer).
        if "\\u0000" in encoded or stored != value or encoded.count("[") + encoded.count("{") > MAX_DEPTH:
            _walk(value)
        size = len(encoded.encode())  # a lone surrogate raises here (UnicodeEncodeError is a ValueError)
    except (TypeError, ValueError, RecursionError) as exc:
        _walk(value)  # raises, naming the place
        raise ValueError(f"result cannot be stored as JSON: {exc}") from None
    return dict(stored), size


def as_postgresql_number(text: str) -> float | int:
    """A JSON number with a fraction or exponent (``text``, as Python's encoder writes a float) as PostgreSQL's
    ``jsonb`` gives it back: a float, except a number written with a positive exponent, which comes back an integer.

    ``jsonb`` keeps numbers as ``numeric`` and prints them without an exponent and with the scale they were written
    with: ``1.5`` stays ``1.5``, but Python writes ``1e16`` as ``1e+16`` (every float of 1e16 or more, in size,
    with an exponent and no fraction), which PostgreSQL reads back as ``10000000000000000``, an integer (and
    ``1.5e300`` as 15 followed by 299 zeros, not even equal to the float). Taking the same value here keeps the
    promise of :func:`check_result`: what a later step sees is what the database holds. Raises nothing for the
    text ``json`` hands it."""
    if "e+" in text or "E+" in text:
        return int(Decimal(text))
    return float(text)


def _walk(value: dict[str, Any]) -> None:
    """Raise naming the first place in ``value`` that JSON or PostgreSQL cannot hold; return if there is none."""
    # Each entry: (value, its key in its parent, the parent's entry); the path is built only for the message.
    Entry = tuple[Any, Any, Any]
    stack: list[tuple[Entry, int]] = [((value, None, None), 0)]
    while stack:
        entry, depth = stack.pop()
        item = entry[0]
        if item is None or isinstance(item, bool | int):
            continue
        if isinstance(item, str):
            _check_text(item, entry)
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise ValueError(f"{_path(entry)} is {item!r}: JSON has no NaN or Infinity")
        elif depth >= MAX_DEPTH:
            raise ValueError(f"{_path(entry)[:200]}... is nested deeper than {MAX_DEPTH} levels (or refers to itself)")
        elif isinstance(item, dict):
            for key, sub in item.items():
                if not isinstance(key, str):
                    raise TypeError(
                        f"{_path(entry)} has a key of type {type(key).__name__} ({key!r}): JSON keys are strings"
                    )
                _check_text(key, entry, key=True)
                stack.append(((sub, key, entry), depth + 1))
        elif isinstance(item, list | tuple):
            stack.extend(((sub, index, entry), depth + 1) for index, sub in enumerate(item))
        else:
            kind = type(item).__name__
            hint = HINTS.get(kind)
            raise TypeError(f"{_path(entry)} is a {kind}, which JSON cannot hold" + (f": {hint}" if hint else ""))


def _check_text(text: str, entry: Any, *, key: bool = False) -> None:
    where = f"{_path(entry)} has a key that" if key else _path(entry)
    if "\x00" in text:
        raise ValueError(f"{where} contains a NUL character (\\x00), which PostgreSQL text cannot hold")
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            raise ValueError(f"{where} contains a lone surrogate, which is not valid UTF-8") from None


def _path(entry: Any) -> str:
    keys = []
    while entry is not None and entry[2] is not None:
        keys.append(entry[1])
        entry = entry[2]
    return "result" + "".join(f"[{key!r}]" for key in reversed(keys))


def clean_text(text: str, limit: int | None = None) -> str:
    """``text`` as PostgreSQL can store it: NUL shown as ``\\x00``, lone surrogates replaced; cut to ``limit``.

    For error messages and reasons the engine writes itself (an exception's text may carry whatever the handler
    held), so that recording a failure can never fail on its own text.

    Raises nothing.
    """
    if not text.isascii():
        text = text.encode("utf-8", "replace").decode("utf-8")
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    return text if limit is None else text[:limit]
