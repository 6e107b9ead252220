"""orchestrator/bidi.py and the ``bdi`` filter: text put in an isolation can close only what it opens itself."""

from __future__ import annotations

import pytest
from django.template import Context, Template
from django.utils.safestring import mark_safe

from orchestrator.bidi import balanced, isolate

PDI, RLO, RLI, FSI = "\u2069", "\u202e", "\u2067", "\u2068"


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("Invoice 42", "Invoice 42"),  # no control: as it is
        (f"Invoice {RLO}", f"Invoice {RLO}"),  # an override ends with the isolation: nothing to do
        (f"Invoice {PDI}{RLO}", f"Invoice {RLO}"),  # a pop closing nothing of its own: dropped
        (f"a {RLI}b{PDI} c", f"a {RLI}b{PDI} c"),  # its own isolate, closed: kept
        (f"a {RLI}b", f"a {RLI}b{PDI}"),  # its own isolate, left open: closed at its end
        (f"{PDI}{PDI}{FSI}x{PDI}{PDI}", f"{FSI}x{PDI}"),
    ],
)
def test_balanced_drops_stray_pops_and_closes_open_isolates(text, kept):
    # when / then
    assert balanced(text) == kept


def test_isolate_puts_the_balanced_text_between_first_strong_isolate_and_its_pop():
    # when
    said = isolate(f"Taxi {PDI}{RLO}")

    # then
    assert said == f"{FSI}Taxi {RLO}{PDI}"


def render(value: object) -> str:
    return Template("{% load baton %}{{ value|bdi }}").render(Context({"value": value}))


def test_the_bdi_filter_escapes_isolates_and_balances():
    # when / then
    assert render(f"<b>x</b>{PDI}{RLO}") == f"<bdi>&lt;b&gt;x&lt;/b&gt;{RLO}</bdi>"
    assert render(None) == "<bdi></bdi>"
    assert render(42) == "<bdi>42</bdi>"
    # Already HTML (another filter's output): balanced, not escaped a second time.
    assert render(mark_safe(f"<em>x</em>{PDI}")) == "<bdi><em>x</em></bdi>"  # noqa: S308 (the test's own HTML)
