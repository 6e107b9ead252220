"""The audit key settings: production brings its own key, a malformed one stops the start."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured

from baton_site.settings import parse_audit_keys

PRODUCTION = {
    "DATABASE_URL": "postgres://baton@127.0.0.1/baton",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "BATON_SECRET_KEY": "s" * 50,
    "BATON_DEBUG": "0",
}


def start(**env: str) -> subprocess.CompletedProcess[str]:
    """Import the settings in a fresh interpreter, as a web, worker or beat process does at start."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BATON_") and k not in PRODUCTION}
    return subprocess.run(
        [sys.executable, "-c", "import baton_site.settings as s; print(s.BATON_AUDIT_KEYS[0][0])"],
        env={**clean, **PRODUCTION, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_production_without_an_audit_key_refuses_to_start():
    """With Redis, no debug and no BATON_AUDIT_KEYS the start stops naming the variable (no silent demo key)."""
    # when
    started = start()

    # then
    assert started.returncode != 0
    assert "missing or wrong:" in started.stderr
    assert "BATON_AUDIT_KEYS" in started.stderr


def test_production_signs_with_the_first_configured_key():
    """The first key of BATON_AUDIT_KEYS is the current one."""
    # when
    started = start(BATON_AUDIT_KEYS=f"k2:{'x' * 32},k1:{'y' * 40}")

    # then
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == "k2"


@pytest.mark.parametrize(
    ("value", "fault"),
    [
        pytest.param("k1", "key 1 has no ':'", id="no-secret"),
        pytest.param("k1:short", "the secret of key 'k1' has fewer than 32", id="short-secret"),
        pytest.param(f"key id with spaces:{'x' * 32}", "the id of key 1 is not", id="bad-id"),
        pytest.param(f"{'k' * 17}:{'x' * 32}", "the id of key 1 is not", id="long-id"),
        pytest.param(f"k1:{'x' * 32},k1:{'y' * 32}", "names key 'k1' twice", id="duplicate"),
        pytest.param(f"k1:{'x' * 32},", "key 2 is empty", id="trailing-comma"),
    ],
)
def test_a_malformed_key_list_is_refused_naming_the_fault(value, fault):
    """Ids are short identifiers stored with each event; secrets have at least 32 characters. Refused as a setting
    (ImproperlyConfigured: one line at start, orchestrator/startup.py), not as a crash."""
    with pytest.raises(ImproperlyConfigured, match=fault):
        parse_audit_keys(value)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("s3cr3t-pasted-without-its-id-0123456789", id="no-id"),
        pytest.param("s3cr3t+/with:a-colon-and-no-id-0123456789", id="colon-in-secret"),
        pytest.param("k1:s3cr3t-too-short", id="short-secret"),
        pytest.param("a-secret-of-more-than-16-s3cr3t:0123456789abcdef0123456789abcdef", id="long-id"),
        pytest.param(f"k1:{'x' * 32},s3cr3t pasted-alone-0123456789", id="second-key"),
    ],
)
def test_a_refused_key_list_never_shows_a_secret(value):
    """The message goes to a terminal or a log: it names a key by position, or by an id that is valid."""
    # when
    with pytest.raises(ImproperlyConfigured) as refused:
        parse_audit_keys(value)

    # then
    assert "s3cr3t" not in str(refused.value)


def test_a_key_list_keeps_its_order():
    assert parse_audit_keys(f" new:{'n' * 32} , old:{'o' * 32}") == [("new", "n" * 32), ("old", "o" * 32)]
