"""The workflow diagram's DOT: each step coloured by its latest run's state and tagged with it for the page."""

from __future__ import annotations

from orchestrator import registry
from orchestrator.diagram import FILL, workflow_dot


def test_a_step_with_a_known_state_carries_its_fill_and_a_class_naming_the_state():
    # given
    workflow = registry.get("expense_approval")

    # when
    dot = workflow_dot(workflow, {"payout": "dead", "team_approval": "succeeded"})

    # then
    payout = next(line for line in dot.splitlines() if line.strip().startswith('"payout" ['))
    assert f'fillcolor="{FILL["dead"]}"' in payout
    assert 'class="step-dead"' in payout
    assert 'class="step-succeeded"' in next(line for line in dot.splitlines() if '"team_approval" [' in line)


def test_no_class_without_a_state_or_for_a_state_the_palette_does_not_know():
    # given: a state name that is not ours (a class name is built from it, so it must never be free text)
    workflow = registry.get("expense_approval")

    # when
    plain = workflow_dot(workflow)
    odd = workflow_dot(workflow, {"payout": 'x" onload="alert(1)'})

    # then
    assert "class=" not in plain
    assert "class=" not in odd
    assert "alert" not in odd
