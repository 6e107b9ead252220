"""The live sockets' settings: a re-check period that would disable the safety net or hammer the database stops
the start with a message naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.orchestrator.test_settings_audit import PRODUCTION

KEYS = f"k1:{'x' * 32}"


def start(**env: str) -> subprocess.CompletedProcess[str]:
    """Import the settings in a fresh interpreter, as a web process does at start; print the re-check period."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BATON_") and k not in PRODUCTION}
    return subprocess.run(
        [sys.executable, "-c", "import baton_site.settings as s; print(s.BATON_LIVE_RECHECK)"],
        env={**clean, **PRODUCTION, "BATON_AUDIT_KEYS": KEYS, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("value", ["inf", "1e400", "0.001", "0", "-5", "nan", "soon", "86400"])
def test_a_live_recheck_period_out_of_range_refuses_to_start(value) -> None:
    """inf (and 1e400) never re-checks, so a missed sign-out keeps a socket open for ever; 0.001 re-checks every
    socket a thousand times a second."""
    # when
    started = start(BATON_LIVE_RECHECK=value)

    # then
    assert started.returncode != 0, started.stdout
    assert "BATON_LIVE_RECHECK" in started.stderr


@pytest.mark.parametrize(("value", "seconds"), [("5", 5.0), ("0.5", 0.5), ("2.5", 2.5), ("3600", 3600.0)])
def test_a_live_recheck_period_in_range_is_used_as_given(value, seconds) -> None:
    # when
    started = start(BATON_LIVE_RECHECK=value)

    # then
    assert started.returncode == 0, started.stderr
    assert float(started.stdout) == seconds
