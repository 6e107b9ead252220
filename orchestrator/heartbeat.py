"""A long response tells the web server its worker is alive, so a worker timeout stops hung requests only.

``make web`` runs gunicorn's sync workers with a timeout (``BATON_WEB_TIMEOUT``): a worker that has not reported
for that long is killed and replaced. A sync worker reports only between requests, so a response that streams for
longer (an audit export of a large trail) would be killed mid-stream although it is making progress.
:func:`keep_alive` reports for it while its chunks flow. gunicorn's ``post_worker_init`` hook
(baton_site/gunicorn_hooks.py) hands the worker's report function to :func:`serve_worker`; in any other server
(daphne, the test client) nothing is handed over and :func:`keep_alive` only passes the chunks on.

No Django import here: gunicorn's arbiter loads the hooks module before Django is set up.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

# At most one report per this many seconds: a report is a system call (gunicorn touches a file), a chunk is
# a line of an export.
REPORT_EVERY = 1.0

_notify: Callable[[], None] | None = None


def serve_worker(notify: Callable[[], None]) -> None:
    """Remember ``notify``, the running server worker's "I am alive" call, for :func:`keep_alive`. Called once per
    worker process, by gunicorn's ``post_worker_init`` hook."""
    global _notify
    _notify = notify


def keep_alive(chunks: Iterable[T]) -> Iterator[T]:
    """``chunks`` unchanged; after a chunk has been taken (by gunicorn: written to the client), the worker reports
    itself alive if it has not done so for :data:`REPORT_EVERY` seconds. A client that stops reading blocks the
    write, so no report is made and the worker timeout still ends the response. Closing this closes ``chunks``
    (an export's server-side cursor) at once."""
    notify = _notify
    if notify is None:
        yield from chunks
        return
    last = time.monotonic()
    try:
        for chunk in chunks:
            yield chunk
            now = time.monotonic()
            if now - last >= REPORT_EVERY:
                notify()
                last = now
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
