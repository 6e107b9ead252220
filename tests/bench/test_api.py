"""``bench/api.py``'s verdict on issue 12's target: each of its checks can fail on its own (bench/README.md, "Reading
the target")."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def bench_api() -> ModuleType:
    # bench/ is scripts, not a package: load api.py as its own module, with its neighbours importable as it expects.
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("bench_api_under_test", BENCH / "api.py")
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


def run(starts_per_s: float, p95_ms: float, statuses: dict[int, int] | None = None, waiting: str = "100/100") -> dict:
    return {"starts_per_s": starts_per_s, "p95_ms": p95_ms, "statuses": statuses or {201: 100}, "waiting": waiting}


def test_a_run_that_holds_every_check_meets_the_target(bench_api: ModuleType) -> None:
    # given a closed loop at 190 starts/s and an open loop serving 150/s with p95 14 ms, all 201, the worker done
    result = bench_api.verdict(run(190.0, 48.0), run(150.0, 14.0))

    # then the target is met, every check holding, and the closed loop's own p95 is not one of them
    assert result["met"] is True
    assert all(result["checks"].values())
    assert len(result["checks"]) == 5


@pytest.mark.parametrize(
    ("capacity", "at_rate", "failed"),
    [
        (run(149.9, 40.0), run(150.0, 14.0), "closed loop serves >= 150 starts/s"),
        (run(190.0, 48.0), run(148.4, 14.0), "open loop at 150/s keeps up (>= 99 % served)"),
        (run(190.0, 48.0), run(150.0, 50.1), "open loop p95 <= 50 ms"),
        (run(190.0, 48.0), run(150.0, 14.0, {201: 99, 503: 1}), "every start answered 201"),
        (run(190.0, 48.0, {201: 99, 409: 1}), run(150.0, 14.0), "every start answered 201"),
        (run(190.0, 48.0), run(150.0, 14.0, waiting="99/100"), "the worker ran every started step"),
    ],
)
def test_each_check_fails_on_its_own(bench_api: ModuleType, capacity: dict, at_rate: dict, failed: str) -> None:
    # when one measured figure misses its bound
    result = bench_api.verdict(capacity, at_rate)

    # then that check alone fails, and with it the target
    assert result["met"] is False
    assert [check for check, held in result["checks"].items() if not held] == [failed]
