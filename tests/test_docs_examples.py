"""The workflow a developer copies from README's "Workflows as code" runs as written: executed verbatim (its
``register`` included) against the engine, on PostgreSQL. Before, the sample called six handlers it never defined
(a NameError when copied) and took the demo app's own name and version, ``order_fulfilment`` v1."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from approvals.models import HumanTask
from approvals.services.base import APPROVE
from approvals.services.tasks import task_decide
from orchestrator import registry
from orchestrator.dsl import Workflow
from orchestrator.models import InstanceState
from orchestrator.services.instances import instance_start

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_workflow_sample() -> str:
    """The first python block of README's "Workflows as code" section, as a reader copies it."""
    section = README.read_text().split("## Workflows as code", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert block, "README's Workflows as code has no python block"
    return block.group(1)


@pytest.fixture
def sample() -> Iterator[Workflow]:
    """README's sample executed in a module namespace of its own; what it registers is unregistered after."""
    before = {(w.name, w.version) for w in registry.all_definitions()}
    namespace: dict[str, Any] = {"__name__": "readme_sample"}
    exec(compile(readme_workflow_sample(), "README.md", "exec"), namespace)  # noqa: S102 (our own README)
    added = [w for w in registry.all_definitions() if (w.name, w.version) not in before]
    assert len(added) == 1, f"README's sample registered {added}, not one new workflow beside the demo's"
    yield added[0]
    registry.unregister(added[0].name, added[0].version)


@pytest.mark.django_db
def test_readme_s_sample_completes_a_small_order_without_approval(sample, run_steps) -> None:
    # given README's workflow registered as the sample does it
    # when an order of 120 is started and its steps run
    instance = instance_start(sample.name, {"order_id": "SO-1", "customer": "ACME", "amount": "120.00"})
    run_steps(instance)

    # then it completes through every automated step, each handler's result in the data
    instance.refresh_from_db()
    assert instance.state == InstanceState.COMPLETED, instance.state
    assert instance.title == "Order SO-1 for ACME"
    assert {"reservation", "payment", "tracking"} <= set(instance.data)
    assert instance.data["notified"] == "ACME"


@pytest.mark.django_db
def test_readme_s_sample_asks_a_manager_above_1000_and_ships_once_approved(sample, run_steps, users) -> None:
    # given README's workflow and an order above 1000
    instance = instance_start(sample.name, {"order_id": "SO-2", "customer": "ACME", "amount": "5000"})
    run_steps(instance)
    task = HumanTask.objects.get(instance=instance)

    # when a manager approves the task the decision opened
    task_decide(task.pk, users.manager, APPROVE)
    run_steps(instance)

    # then the order ships and the instance completes
    instance.refresh_from_db()
    assert instance.state == InstanceState.COMPLETED, instance.state
    assert instance.data["tracking"] == f"T-{instance.pk}"
