"""Workflows from installed packages: the ``baton.workflows`` entry point group, loaded at start-up."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from orchestrator import registry
from orchestrator.dsl import Task, Workflow

MODULE = """
from orchestrator.dsl import Task, Workflow
from orchestrator.registry import register

def hello(ctx):
    return {"hello": True}

register(Workflow(name="{name}", version=1, steps=[Task("hello", hello)]))
flow = Workflow(name="{name}_object", version=1, steps=[Task("hello", hello)])
not_a_flow = 42
"""


@pytest.fixture
def package_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder on sys.path holding a module ``ep_flows`` and a ``.dist-info`` that declares its entry point."""
    (tmp_path / "ep_flows.py").write_text(MODULE.replace("{name}", "ep_flow"))
    dist_info = tmp_path / "ep_flows-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-flows\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text("[baton.workflows]\nep = ep_flows\nep_object = ep_flows:flow\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("ep_flows", None)
    for name in ("ep_flow", "ep_flow_object"):
        registry.unregister(name, 1)


def test_load_modules_registers_the_workflows_of_installed_entry_points(package_on_path, settings):
    """Given a distribution declaring two entry points (a module, a Workflow), start-up registers both flows."""
    # given
    settings.BATON_WORKFLOW_MODULES = []

    # when
    registry.load_modules()

    # then
    assert registry.get("ep_flow").key == "ep_flow@v1"
    assert registry.get("ep_flow_object").key == "ep_flow_object@v1"


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("ep_missing_module", "failed to load: ModuleNotFoundError"),
        ("ep_flows:no_such_attribute", "failed to load: AttributeError"),
        ("ep_flows:not_a_flow", "names int 'ep_flows:not_a_flow'"),
    ],
)
def test_a_broken_entry_point_stops_start_up_naming_itself(package_on_path, value, says):
    """An entry point that cannot load, or names neither a module nor a Workflow, is refused with its name and value."""
    # given
    entry_point = EntryPoint(name="broken", value=value, group=registry.ENTRY_POINT_GROUP)

    # when
    with pytest.raises(ImproperlyConfigured) as refused:
        registry._load_entry_point(entry_point)

    # then
    assert "'broken'" in str(refused.value)
    assert says in str(refused.value)


def test_an_entry_point_naming_an_already_registered_workflow_is_accepted(register_workflow):
    """A Workflow both imported through the setting and named by an entry point registers once, without conflict."""
    # given
    flow = register_workflow(Workflow(name="twice_named", version=1, steps=[Task("a", lambda ctx: None)]))
    sys.modules["ep_twice"] = type(sys)("ep_twice")
    sys.modules["ep_twice"].flow = flow  # type: ignore[attr-defined]

    # when
    try:
        registry._load_entry_point(EntryPoint(name="twice", value="ep_twice:flow", group=registry.ENTRY_POINT_GROUP))
    finally:
        sys.modules.pop("ep_twice")

    # then
    assert registry.all_versions("twice_named") == [flow]
