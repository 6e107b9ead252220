"""Reading timestamps PostgreSQL can hold and Python cannot.

PostgreSQL stores dates up to year 294276; Python's datetime stops at 9999. A value past that (a pause until
``9999-12-31T23:59:59-23:59`` is year 10000 in UTC, accepted before the input checks existed) made every query
reading the row fail, so the instance list answered 500 for everyone and the instance could not be opened to
resume it. Such a value is read as the largest (or smallest) instant that still converts to any local time zone:
the row shows, and an operator can act on it. New input is refused before it is stored
(``orchestrator.inputs.check_when``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

# Two days inside datetime's range, so converting to any time zone for display cannot overflow.
LATEST = (datetime.max - timedelta(days=2)).replace(tzinfo=UTC)
EARLIEST = (datetime.min + timedelta(days=2)).replace(tzinfo=UTC)


def tolerate_out_of_range_timestamps(sender: Any, connection: Any, **kwargs: Any) -> None:
    """``connection_created`` receiver: wrap the connection's ``timestamptz`` text loader (Django's, which sets
    the connection's time zone) so an out-of-range value loads as LATEST or EARLIEST instead of raising."""
    if connection.vendor != "postgresql":
        return
    import psycopg
    from psycopg.pq import Format

    adapters = connection.connection.adapters
    oid = adapters.types["timestamptz"].oid
    base = adapters.get_loader(oid, Format.TEXT)
    if base is None or getattr(base, "tolerant", False):
        return

    class TolerantTimestamptzLoader(base):  # type: ignore[misc, valid-type]
        tolerant = True

        def load(self, data: Any) -> datetime:
            try:
                return super().load(data)
            except psycopg.DataError:
                text = bytes(data)
                # psycopg's message says which end; the text itself carries the era for BC dates.
                return EARLIEST if text.endswith(b"BC") or text.startswith(b"-") else LATEST

    adapters.register_loader("timestamptz", TolerantTimestamptzLoader)
