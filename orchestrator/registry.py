"""The registry of workflow definitions, by name and version."""

from __future__ import annotations

import importlib
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from orchestrator.dsl import DefinitionError, Workflow

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
    _definitions[(workflow.name, workflow.version)] = workflow
    return workflow


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
