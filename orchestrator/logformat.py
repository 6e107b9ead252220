"""Log records of a bounded size, whatever the exception behind them.

An exception logged while a database or broker is down often carries the chain of everything that failed before
it: libraries retry inside ``except`` blocks, so each new error's ``__context__`` holds the previous one, and an
exception object raised again collects frames on every raise. Formatted in full, each record repeated the earlier
ones and a worker's log grew by hundreds of megabytes in minutes. This formatter keeps the newest exceptions of a
chain and the innermost frames of each, and says what it left out.
"""

from __future__ import annotations

import logging
import traceback
from types import TracebackType
from typing import Any

# The logged exception and the ones that directly led to it; older links are left out.
MAX_CHAIN = 3
# The innermost frames of each exception in the chain: where it was raised.
MAX_FRAMES = 10
# A last bound on one record's traceback text, in characters.
MAX_CHARS = 20_000


class BoundedFormatter(logging.Formatter):
    """``logging.Formatter`` with tracebacks bounded to :data:`MAX_CHAIN` chained exceptions of at most
    :data:`MAX_FRAMES` frames each, and :data:`MAX_CHARS` characters (settings.LOGGING)."""

    def formatException(self, ei: Any) -> str:
        """The traceback of ``ei`` (a ``sys.exc_info()`` triple), bounded."""
        _kind, value, tb = ei
        if value is None:
            return super().formatException(ei)
        return format_bounded(value, tb)


def format_bounded(value: BaseException, tb: TracebackType | None = None) -> str:
    """The chained traceback of ``value``: its newest :data:`MAX_CHAIN` links, innermost frames first kept."""
    summary = traceback.TracebackException(type(value), value, tb or value.__traceback__, limit=-MAX_FRAMES)
    node, links, left_out = summary, 1, 0
    while True:
        older = node.__cause__ if node.__cause__ is not None else None
        if older is None and not node.__suppress_context__:
            older = node.__context__
        if older is None:
            break
        if links == MAX_CHAIN:
            left_out = _chain_length(older)
            node.__cause__ = node.__context__ = None
            break
        node, links = older, links + 1
    text = "".join(summary.format(chain=True)).rstrip("\n")
    if left_out:
        text = f"({left_out} earlier chained exception(s) left out)\n{text}"
    if len(text) > MAX_CHARS:
        text = f"(traceback cut to its last {MAX_CHARS} characters)\n…{text[-MAX_CHARS:]}"
    return text


def _chain_length(node: Any) -> int:
    count = 0
    seen: set[int] = set()
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        count += 1
        node = (
            node.__cause__ if node.__cause__ is not None else (None if node.__suppress_context__ else node.__context__)
        )
    return count
