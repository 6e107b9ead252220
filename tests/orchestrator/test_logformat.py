"""Log records stay bounded: an error logged during an outage does not repeat every error before it."""

from __future__ import annotations

import logging
import sys

from baton_site.settings import LOGGING
from orchestrator.logformat import MAX_CHAIN, MAX_FRAMES, BoundedFormatter


def record_for(exc: BaseException) -> str:
    formatter = BoundedFormatter("%(levelname)s %(message)s")
    try:
        raise exc
    except BaseException:
        record = logging.LogRecord("baton", logging.ERROR, __file__, 1, "could not publish", None, sys.exc_info())
    return formatter.format(record)


def chain_of(count: int) -> Exception:
    """An error raised while handling the one before it, ``count`` deep, as a library retrying in ``except`` does."""
    error: Exception | None = None
    for n in range(count):
        try:
            try:
                if error is not None:
                    raise error
            finally:
                raise ConnectionError(f"attempt {n}")
        except ConnectionError as new:
            error = new
    assert error is not None
    return error


def ping(levels: int) -> None:
    if levels:
        pong(levels - 1)
    raise ConnectionError("deep down")


def pong(levels: int) -> None:
    # Alternating frames: Python's own "[Previous line repeated]" folding does not shorten them.
    ping(levels)


def test_a_long_chain_keeps_the_newest_links_and_says_what_it_left_out():
    # given: 200 chained errors; formatted in full they take thousands of lines
    error = chain_of(200)

    # when
    text = record_for(error)

    # then
    assert "attempt 199" in text
    assert "attempt 198" in text
    assert "attempt 100" not in text
    assert "earlier chained exception(s) left out" in text
    assert text.count("Traceback (most recent call last)") == MAX_CHAIN
    assert len(text.splitlines()) < 150


def test_the_same_number_of_errors_later_gives_a_record_of_the_same_size():
    """The record does not grow with the number of errors before it."""
    assert len(record_for(chain_of(20)).splitlines()) == len(record_for(chain_of(2000)).splitlines())


def test_a_deep_traceback_keeps_its_innermost_frames():
    try:
        ping(300)
    except ConnectionError as exc:
        error = exc

    text = record_for(error)

    assert "deep down" in text
    assert text.count(", in p") <= MAX_FRAMES
    assert len(text.splitlines()) < 100


def test_settings_use_the_bounded_formatter():
    assert LOGGING["formatters"]["plain"]["()"] == "orchestrator.logformat.BoundedFormatter"
