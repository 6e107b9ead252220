"""The one request body the API reads: JSON, checked before any of it reaches a service or the database.

DRF's own JSONParser reads the whole stream (no size limit), turns ``1e999`` into an infinity that PostgreSQL's
jsonb then refuses (a 500), lets a NUL character or a lone surrogate (``"\\ud800"``: legal JSON, but half a
UTF-16 pair that no UTF-8 text holds) through to a text or jsonb column (another 500), lets the
RecursionError of very deep nesting escape as a 500 and takes the last of a key given twice in one object (where
another parser on the way, a proxy's or a signature check's, may have read the first). This one refuses each of
them with a 400 (413 for size): JSON that is not JSON as a ``ParseError``, well-formed JSON holding such a value
as an :class:`InvalidValue` naming the field (``api.problems`` answers it as invalid input, with ``errors``).
"""

from __future__ import annotations

import json
import math
from typing import Any

from django.conf import settings
from rest_framework import status
from rest_framework.exceptions import APIException, ParseError
from rest_framework.parsers import BaseParser

from orchestrator.inputs import RepeatedKey, unique_keys

# Bodies past this are not a start or a decision; the instance data itself is bounded by it too.
BODY_MAX = 256 * 1024
# Nesting deeper than this is not business data (and deep enough nesting exhausts the parser's stack).
DEPTH_MAX = 32


class PayloadTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = f"The request body is larger than {BODY_MAX // 1024} KiB."
    default_code = "payload_too_large"


class InvalidValue(ParseError):
    """Well-formed JSON holding a value that cannot be stored or nested past ``DEPTH_MAX``, at ``field``: the dotted
    name problem ``errors`` use (``input.employee``, ``payload.items[0]``; ``body`` for the body as a whole),
    ``message`` what to change there. The detail says both, as ``body.input.employee: ...``."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message[:1].lower()}{message[1:]}")
        self.field = where[len("body.") :] if where.startswith("body.") else "body"
        self.message = message


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is too large to store")
    return value


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _unstorable(text: str) -> str | None:
    """What in ``text`` PostgreSQL cannot store (a NUL character, a lone surrogate), or None."""
    if "\x00" in text:
        return "the NUL character (\\u0000)"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            return f"the lone surrogate \\u{ord(text[exc.start]):04x} (half of a UTF-16 pair)"
    return None


def check_value(value: Any, depth: int = 0, where: str = "body") -> None:
    """Raise InvalidValue naming where a NUL character, a lone surrogate or nesting deeper than ``DEPTH_MAX`` is
    in ``value``."""
    if depth > DEPTH_MAX:
        raise InvalidValue(where, f"Nested deeper than {DEPTH_MAX} levels.")
    if isinstance(value, str):
        bad = _unstorable(value)
        if bad:
            raise InvalidValue(where, f"Remove {bad}; it cannot be stored.")
    elif isinstance(value, dict):
        for key, item in value.items():
            bad = _unstorable(key)
            if bad:
                # The key itself is not shown: it is what cannot be printed.
                raise InvalidValue(where, f"A key holds {bad}; it cannot be stored.")
            check_value(item, depth + 1, f"{where}.{key[:40]}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_value(item, depth + 1, f"{where}[{index}]")


class SafeJSONParser(BaseParser):
    """``application/json`` (UTF-8), at most ``BODY_MAX`` bytes, finite numbers, no NUL or lone surrogate, bounded
    nesting."""

    media_type = "application/json"

    def parse(self, stream: Any, media_type: str | None = None, parser_context: dict | None = None) -> Any:
        limit = min(BODY_MAX, settings.DATA_UPLOAD_MAX_MEMORY_SIZE or BODY_MAX)
        raw = stream.read(limit + 1) if stream is not None else b""
        if len(raw) > limit:
            raise PayloadTooLarge(f"The request body is larger than {limit // 1024} KiB.")
        if not raw.strip():
            raise ParseError("The body is empty: send a JSON object.")
        try:
            text = raw.decode("utf-8")
            data = json.loads(text, parse_float=_finite, parse_constant=_constant, object_pairs_hook=unique_keys)
        except RecursionError:
            raise InvalidValue("body", f"Nested deeper than {DEPTH_MAX} levels.") from None
        except RepeatedKey as exc:
            raise InvalidValue("body", f"Valid JSON, but {exc}.") from None
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError and the number checks above
            raise ParseError(f"The body is not valid JSON: {str(exc)[:200]}") from None
        check_value(data)
        return data
