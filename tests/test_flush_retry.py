"""The teardown flush between transactional tests tries again after a lock conflict, and only then."""

from __future__ import annotations

from collections.abc import Callable

import psycopg.errors
import pytest
from django.core.management.base import CommandError
from django.db.utils import OperationalError, ProgrammingError

from tests.conftest import FLUSH_ATTEMPTS, flush_retrying


def _flush_failing_with(cause: Exception, times: int) -> tuple[list[int], Callable[[], None]]:
    calls: list[int] = []

    def flush() -> None:
        calls.append(1)
        if len(calls) <= times:
            # Django's flush command wraps the database error, which wraps psycopg's, as in CI's failure.
            try:
                try:
                    raise cause
                except psycopg.Error as error:
                    raise OperationalError(str(error)) from error
            except Exception as error:
                raise CommandError("Database test_baton couldn't be flushed.") from error

    return calls, flush


@pytest.mark.parametrize(
    "cause", [psycopg.errors.DeadlockDetected("deadlock detected"), psycopg.errors.LockNotAvailable("lock timeout")]
)
def test_a_flush_that_meets_a_lock_conflict_runs_again(cause):
    # given a flush that loses two lock conflicts to the worker's sweep
    calls, flush = _flush_failing_with(cause, times=2)

    # when
    flush_retrying(flush, pause=0)

    # then the third attempt flushed
    assert len(calls) == 3


def test_a_lock_conflict_that_persists_is_raised_after_the_last_attempt():
    calls, flush = _flush_failing_with(psycopg.errors.DeadlockDetected("deadlock detected"), times=FLUSH_ATTEMPTS)

    with pytest.raises(CommandError):
        flush_retrying(flush, pause=0)

    assert len(calls) == FLUSH_ATTEMPTS


def test_any_other_error_is_raised_at_once():
    calls: list[int] = []

    def flush() -> None:
        calls.append(1)
        raise CommandError("flush failed") from ProgrammingError('relation "x" does not exist')

    with pytest.raises(CommandError):
        flush_retrying(flush, pause=0)

    assert calls == [1]


def test_every_transactional_test_flushes_through_the_retry():
    from django.test import TransactionTestCase

    assert TransactionTestCase._fixture_teardown.__module__ == "tests.conftest"  # type: ignore[attr-defined]
