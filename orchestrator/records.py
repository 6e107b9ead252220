"""The engine's records in the instance data: keys only the engine writes, whatever way data comes in.

Under a ``Human`` step's name the engine keeps its decision (``{"decision", "by", "comment", ...}``,
``flow.human_step_finish``) and under a ``Signal`` wait's name its timeout (``{"timed_out": true}``,
``signals._continue_after_timeout``). Later decisions and steps read them: who approved, whether the documents
came in time. So nothing that puts data into an instance from outside may set them, or anyone who can start an
instance, send a signal, skip a step or edit the data could write "approved by the CEO". The rule and its
decisions: docs/architecture.md, "Records in the data". Each way in checks here:

- a start's input (``instances.instance_start``: the API, the start page, ``baton_start``, schedules), as given
  and as its start form cleaned it;
- a signal's payload (``signals._validated``), as sent and as its node's form or schema cleaned it;
- an operator's output for a skipped step (``steps.step_skip``: the console's and the API's skip);
- an operator's edit of the data (``operations.instance_data_edit``): a record may be removed, never added or
  changed (:func:`records_rewritten`).

The rule is about the top-level keys of the data, where the engine writes: a value nested under another key
(``{"order": {"manager_approval": ...}}``) is the sender's own, and a key naming a node of another workflow is
an ordinary key here. This module reads definitions only (``orchestrator.dsl``); it touches no database.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from django.core.exceptions import ValidationError

from orchestrator.dsl import Workflow


def record_keys(workflow: Workflow) -> frozenset[str]:
    """The keys of ``workflow``'s instance data that are the engine's records: the names of its ``Human`` and
    ``Signal`` nodes (inside parallel branches too: ``Workflow.nodes`` holds every node).

    Takes a registered or unregistered definition; returns a frozenset of names (empty for a workflow with neither
    kind of node). Raises nothing."""
    return workflow.records  # computed once, when the definition was built


def records_set(records: frozenset[str], data: Mapping[str, Any] | Iterable[str]) -> list[str]:
    """The keys of ``data`` (a mapping, or its keys) that are among ``records`` (:func:`record_keys`), sorted; an
    empty list when it sets none. Only top-level keys count (the module's rule). Raises nothing."""
    return sorted(records.intersection(data))


def records_rewritten(records: frozenset[str], before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """The keys of ``records`` that ``after`` adds or changes compared with ``before`` (two versions of an
    instance's data), sorted. A record ``after`` leaves out is not listed: removing one forges nothing, and an
    operator may need to clear a stale one (a timeout an earlier wait left, before a retry that waits again); the
    removal is in the edit's audited diff. A change is a change of JSON (:func:`same_json`): true written as 1 is
    one. Raises nothing."""
    return sorted(
        key for key in records.intersection(after) if key not in before or not same_json(before[key], after[key])
    )


def same_json(one: Any, other: Any) -> bool:
    """Whether two values of JSON data (as ``json.loads`` reads them) are the same JSON: Python's ``==`` holds
    ``True == 1 == 1.0`` (and so ``{"timed_out": true} == {"timed_out": 1}``), which JSON, PostgreSQL's jsonb and
    a ``Decision`` testing ``is True`` tell apart. Key order does not count (jsonb keeps none). Raises what
    ``json.dumps`` raises for a value that is not JSON."""
    if type(one) is not type(other):
        return False
    if isinstance(one, str | int | float | type(None)):
        return bool(one == other)
    return json.dumps(one, sort_keys=True) == json.dumps(other, sort_keys=True)


def record_errors(keys: Iterable[str], *, field: str, sender: str) -> dict[str, list[str]]:
    """The refusal of ``keys`` per field, for a form or an API answer: ``{"<field>.<key>": [message]}``, or
    ``{"<key>": [message]}`` when ``field`` is empty (a start's errors are named by the form's fields; the API puts
    ``input.`` before them). ``sender`` says who may not set the key ("a signal", "a start's input"). Raises
    nothing."""
    return {
        (f"{field}.{key}" if field else key): [
            f"This is where the workflow records what its step {key!r} did; {sender} cannot set it."
        ]
        for key in keys
    }


def records_summary(what: str, keys: Iterable[str], *, verb: str = "set") -> str:
    """One sentence for a refusal: "The <what> may not <verb> the workflow's own records: a, b."."""
    return f"The {what} may not {verb} the workflow's own records: {', '.join(keys)}."


class RecordsRefused(ValidationError):
    """Data from an operator (a skip's output, an edit) sets a key of the engine's records.

    A ``ValidationError``, so the console's pages show it as every refusal of what was typed (its one message says
    which keys); ``keys`` lists them and ``errors`` names each as ``<field>.<key>`` (``output.manager_approval``),
    as the API answers it (422, ``sets_records``)."""

    def __init__(self, message: str, *, keys: list[str], errors: dict[str, list[str]]) -> None:
        super().__init__(message, code="sets_records")
        self.keys = keys
        self.errors = errors


def refuse_records(keys: list[str], *, what: str, field: str, sender: str, verb: str = "set") -> None:
    """Raise :class:`RecordsRefused` for ``keys`` (found by :func:`records_set` or :func:`records_rewritten`)
    when there are any; ``what`` names the data in the message ("output") and ``verb`` what it may not do,
    ``field`` names it in ``errors``, ``sender`` who may not set them (:func:`record_errors`). Returns None when
    ``keys`` is empty."""
    if keys:
        raise RecordsRefused(
            records_summary(what, keys, verb=verb), keys=keys, errors=record_errors(keys, field=field, sender=sender)
        )
