"""Text from people and other systems shown beside Baton's own words, isolated so that its direction controls stay
inside it.

A right-to-left override (U+202E) in a title, a reason or a webhook's name reverses, as drawn, everything after it
to the end of its paragraph: "Retried: Invoice ‮ by admin" read backwards, a row's state and date swapped. Pages put
each such text in a ``<bdi>`` (the ``bdi`` filter of ``orchestrator/templatetags/baton.py``), plain-text messages
between FIRST STRONG ISOLATE and POP DIRECTIONAL ISOLATE (:func:`isolate`).

Neither holds on its own: a POP DIRECTIONAL ISOLATE (U+2069) in the text closes the isolation it sits in, a
``<bdi>``'s as well (Chromium draws ``<bdi>x\u2069\u202eABC</bdi> after`` with "after" reversed), and an override
written after it reaches Baton's words again. :func:`balanced` drops such a stray pop, which matches nothing in the
text itself, and closes the isolates the text opens and leaves open; nothing else of the text changes.
"""

from __future__ import annotations

# LEFT-TO-RIGHT ISOLATE, RIGHT-TO-LEFT ISOLATE, FIRST STRONG ISOLATE; POP DIRECTIONAL ISOLATE (Unicode UAX #9).
ISOLATE_OPENERS = frozenset("\u2066\u2067\u2068")
FSI = "\u2068"
PDI = "\u2069"


def balanced(text: str) -> str:
    """``text`` with every POP DIRECTIONAL ISOLATE that closes no isolate of its own dropped, and one added at its end
    for each isolate it leaves open: put in an isolation (a ``<bdi>``, FSI ... PDI), it can close only its own.
    Embeddings and overrides need nothing: the isolation's end ends them (UAX #9, X6a). Text without a bidi
    control comes back as it is (the common case costs one scan)."""
    if PDI not in text and not ISOLATE_OPENERS.intersection(text):
        return text
    kept, depth = [], 0
    for char in text:
        if char in ISOLATE_OPENERS:
            depth += 1
        elif char == PDI:
            if not depth:
                continue
            depth -= 1
        kept.append(char)
    return "".join(kept) + PDI * depth


def isolate(text: object) -> str:
    """``text`` (anything, as ``str``) as plain text isolated from what is written around it: between FIRST STRONG
    ISOLATE and POP DIRECTIONAL ISOLATE, :func:`balanced`. For messages and other plain text that names something a
    person or another system typed (a title, a name, a reason); a page's HTML uses the ``bdi`` filter."""
    return f"{FSI}{balanced(str(text))}{PDI}"
