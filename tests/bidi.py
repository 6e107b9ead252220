"""Checks that a page isolates the text people and other systems write (``<bdi>``): a direction control in it must
not reorder, as drawn, what the page writes after it (orchestrator/bidi.py says why)."""

from __future__ import annotations

import html

from orchestrator.bidi import ISOLATE_OPENERS, PDI, balanced

RLO = "\u202e"  # RIGHT-TO-LEFT OVERRIDE: everything after it, to the end of its paragraph, is drawn reversed
RLI = "\u2067"  # RIGHT-TO-LEFT ISOLATE: what follows, to a PDI or the paragraph's end, runs right to left
# Embeddings, overrides and isolates that open a run of their own (UAX #9): any of them must stay in its text.
OPENERS = frozenset("\u202a\u202b\u202d\u202e") | ISOLATE_OPENERS
# A hostile tail for a text: a POP DIRECTIONAL ISOLATE, which closes the isolation the text is put in (a <bdi>'s too,
# in Chromium), then an override to the end of the line.
ESCAPE = f"{PDI}{RLO}"


def _closed_isolate(text: str) -> int:
    """The length of the isolate ``text`` opens with, up to and with its own PDI; 0 when nothing in ``text`` closes
    it."""
    depth = 0
    for at, char in enumerate(text):
        if char in ISOLATE_OPENERS:
            depth += 1
        elif char == PDI:
            depth -= 1
            if not depth:
                return at + 1
    return 0


def unisolated(page: str) -> list[str]:
    """Where ``page`` shows a direction control that can reach the page's own words: outside a ``<bdi>`` (or a table
    cell, or an isolate such as a message's FSI ... PDI, closed in the same text) of its own, or in a ``<bdi>`` whose
    text closes it first (a stray PDI). The text around each one, shown in the page's text: not inside a tag's
    attributes, nor the ``<title>``, a textarea holding what was typed, a ``<script>`` or an ``<option>``."""
    found = []
    at = 0
    while at < len(page):
        char = page[at]
        at += 1
        if char not in OPENERS:
            continue
        before = page[: at - 1]
        if before.rfind("<") > before.rfind(">"):
            continue  # inside a tag: an attribute
        opened = before[before.rfind("<") :]
        if opened.startswith(("<title", "<textarea", "<script", "<option")):
            continue
        following = page[at - 1 :]
        node_rest = following[: following.find("<")]
        if char in ISOLATE_OPENERS:
            # Escaping leaves direction controls as they are: the raw text's count is the page's.
            isolate = _closed_isolate(node_rest)
            if isolate:  # an isolate closed within its own text: nothing it holds reaches further
                at += isolate - 1
                continue
        closing = following[following.find("<") :]
        # A bdi of its own, or a table cell holding it alone (a cell is a paragraph of its own for the bidi rules);
        # in a cell, a stray PDI closes nothing: the cell is the paragraph.
        own_bdi = opened.startswith("<bdi>") and closing.startswith("</bdi>")
        own_cell = opened.startswith("<td") and closing.startswith("</td>")
        text = html.unescape(opened[opened.find(">") + 1 :] + node_rest)
        if not own_cell and not (own_bdi and balanced(text) == text):
            found.append(page[max(0, at - 61) : at + 39])
    return found
