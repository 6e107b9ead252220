"""The registry of workflow definitions, by name and version."""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import fields
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from orchestrator.dsl import DefinitionError, Node, Workflow

_definitions: dict[tuple[str, int], Workflow] = {}

# Installed packages declare their workflow modules under this entry point group (pyproject.toml:
# ``[project.entry-points."baton.workflows"] my_flows = "my_flows.workflows"``); README, "Your first workflow".
ENTRY_POINT_GROUP = "baton.workflows"


class UnknownWorkflow(LookupError):
    """No definition is registered under that name (and version)."""


def register(workflow: Workflow) -> Workflow:
    """Register a definition; registering the same name and version twice with another shape is an error, and so
    is anything but a ``Workflow`` (a class or a function returning one: call it). Returns ``workflow``."""
    if not isinstance(workflow, Workflow):
        raise DefinitionError(f"register() takes a Workflow(...), not {workflow!r}")
    existing = _definitions.get((workflow.name, workflow.version))
    if existing is not None and existing is not workflow and existing.fingerprint() != workflow.fingerprint():
        raise DefinitionError(
            f"{workflow.key} is already registered with another shape: bump the version instead of editing it"
        )
    if existing is not None and existing is not workflow and _behaviour(existing) != _behaviour(workflow):
        # Same shape, other code (two modules each declaring order_fulfilment v1, README's example beside the
        # demo's): the later one silently replaced the other's handlers, so running instances ran code their
        # version never had, and which one won depended on import order.
        raise DefinitionError(
            f"{workflow.key} is already registered from {_origin(existing)} with other handlers or settings;"
            f" this one comes from {_origin(workflow)}: give one of them another name, or bump the version"
        )
    _definitions[(workflow.name, workflow.version)] = workflow
    return workflow


def _callable_id(value: Any) -> str:
    """A callable as the code it runs: module, qualified name and, for Python code, a hash of its bytecode and
    constants (two lambdas of one module differ by what they compute, not by their name)."""
    function = getattr(value, "__func__", value)
    code = getattr(function, "__code__", None)
    body = hashlib.sha256(repr((code.co_code, code.co_consts)).encode()).hexdigest()[:12] if code else ""
    name = getattr(function, "__qualname__", type(function).__qualname__)
    return f"{getattr(function, '__module__', '')}.{name}:{body}"


def _described(value: Any) -> Any:
    """``value`` (a node's or a workflow's setting) in a form two definitions compare by: callables and classes by
    their code, sequences item by item, anything else by its ``repr``."""
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    if callable(value):
        return _callable_id(value)
    if isinstance(value, list | tuple):
        return [_described(item) for item in value]
    if isinstance(value, Node):
        return {f.name: _described(getattr(value, f.name)) for f in fields(value)}
    return repr(value)


def _behaviour(workflow: Workflow) -> list[Any]:
    """What ``workflow`` does, beyond its shape: every node's settings and callables, and the workflow's own."""
    own = [_described(getattr(workflow, f.name)) for f in fields(workflow) if f.init and f.name != "steps"]
    return [own, [_described(node) for node in workflow.nodes.values()]]


def _origin(workflow: Workflow) -> str:
    """The module a definition's first handler (or its first node's callable) comes from, for a message."""
    for node in workflow.nodes.values():
        for attribute in ("handler", "choose", "until", "schema"):
            module = getattr(getattr(node, attribute, None), "__module__", None)
            if module:
                return module
    return "a module"


def unregister(name: str, version: int) -> None:
    """Remove a definition (tests that register a temporary version use this)."""
    _definitions.pop((name, version), None)


def get(name: str, version: int | None = None) -> Workflow:
    """The definition ``name`` at ``version``, or its latest version."""
    if version is not None:
        try:
            return _definitions[(name, version)]
        except KeyError:
            raise UnknownWorkflow(f"{name}@v{version}") from None
    versions = [v for (n, v) in _definitions if n == name]
    if not versions:
        raise UnknownWorkflow(name)
    return _definitions[(name, max(versions))]


def is_registered(name: str, version: int) -> bool:
    """Whether ``name`` at ``version`` is registered (no exception to catch on the sweep's path)."""
    return (name, version) in _definitions


def latest_all() -> list[Workflow]:
    """The latest version of every registered workflow, by name."""
    names = sorted({n for (n, _v) in _definitions})
    return [get(n) for n in names]


def all_definitions() -> list[Workflow]:
    """Every registered definition, every version, by name then version."""
    return [_definitions[key] for key in sorted(_definitions)]


def all_versions(name: str) -> list[Workflow]:
    """Every registered version of ``name``, newest first."""
    return sorted((w for (n, _v), w in _definitions.items() if n == name), key=lambda w: -w.version)


def load_modules() -> None:
    """Import the modules named in ``BATON_WORKFLOW_MODULES``, then every ``baton.workflows`` entry point.

    Each module registers its workflows when imported; an entry point may also name a ``Workflow`` object
    (``"my_flows.workflows:onboarding"``), which is registered. Called once per process at start-up
    (``OrchestratorConfig.ready``), so web, worker and beat processes know the same definitions. Raises
    ``ImproperlyConfigured`` naming the variable and the module when a module of the setting (or a package on its
    path) is not installed, and naming the entry point and its distribution when an installed package's entry
    point fails to load: a process that quietly lacked a workflow would leave its instances' steps unrun. An
    ``ImportError`` raised inside a module that was found is the module's own fault and propagates as it is.
    """
    for module in settings.BATON_WORKFLOW_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name is None or not (module == error.name or module.startswith(f"{error.name}.")):
                raise  # the module exists; something it imports does not: its own traceback says what
            raise ImproperlyConfigured(
                f"BATON_WORKFLOW_MODULES names {module!r}, which is not installed ({error}): install its package "
                "in this environment or put it on PYTHONPATH."
            ) from None
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        _load_entry_point(entry_point)


def _load_entry_point(entry_point: EntryPoint) -> None:
    """Import one ``baton.workflows`` entry point and register the ``Workflow`` it names, if it names one."""
    distribution = entry_point.dist.name if entry_point.dist is not None else "an unknown distribution"
    try:
        loaded = entry_point.load()
    except Exception as error:
        raise ImproperlyConfigured(
            f"The {ENTRY_POINT_GROUP} entry point {entry_point.name!r} = {entry_point.value!r} of {distribution} "
            f"failed to load: {error!r}"
        ) from error
    if isinstance(loaded, Workflow):
        register(loaded)
    elif not isinstance(loaded, ModuleType):
        raise ImproperlyConfigured(
            f"The {ENTRY_POINT_GROUP} entry point {entry_point.name!r} of {distribution} names "
            f"{type(loaded).__name__} {entry_point.value!r}: name a module that registers workflows, or a Workflow"
        )
