"""docs/architecture.md, "Webhooks": the receiver's `verify` it prints is "the same function" as
``automation.webhooks.verify``. The printed code, run as a receiver would paste it, must agree with it on genuine
signatures and on anything a sender (or a forger) may put in the header, and never raise."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from automation.webhooks import sign, verify

DOC = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"


def documented_verify() -> Any:
    """The ```python block of the Webhooks section, executed on its own."""
    section = DOC.read_text().split("\n## Webhooks\n", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(compile(code, str(DOC), "exec"), namespace)  # noqa: S102 (our own documentation)
    return namespace["verify"]


DOCUMENTED = documented_verify()
SECRET = "whsec_" + "k" * 40


def test_a_genuine_signature_verifies_with_the_documented_code():
    # given
    body = b'{"id": "instance:7:3", "type": "instance.completed"}'
    header = sign(SECRET, int(time.time()), body)

    # then
    assert DOCUMENTED(SECRET, header, body) is True
    assert DOCUMENTED(SECRET, header, body + b" ") is False
    assert DOCUMENTED("another-secret", header, body) is False


def test_during_a_roll_the_documented_code_verifies_with_either_secret():
    # given a header signed with the new secret and the old one, as during a roll's grace
    body = b'{"id": "instance:7:3", "type": "instance.completed"}'
    header = sign(["new-" + SECRET, SECRET], int(time.time()), body)

    # then
    assert DOCUMENTED("new-" + SECRET, header, body) is True
    assert DOCUMENTED(SECRET, header, body) is True
    assert DOCUMENTED("another-secret", header, body) is False


@settings(max_examples=300, deadline=None)
@given(
    header=st.one_of(
        st.none(),
        st.text(max_size=80),
        st.builds(lambda t, v: f"t={t},v1={v}", st.integers(-(10**20), 10**20), st.text(max_size=70)),
        st.builds(
            lambda t, v, w: f"t={t},v1={v},v1={w}",
            st.integers(-(10**20), 10**20),
            st.text(max_size=70),
            st.text(max_size=70),
        ),
    ),
    body=st.binary(max_size=50),
)
def test_the_documented_code_agrees_with_the_module_on_any_header(header, body):
    assert DOCUMENTED(SECRET, header, body) == verify(SECRET, header, body)
