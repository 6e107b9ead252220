"""The registry of workflow definitions, by name and version."""

from __future__ import annotations

import importlib

from django.conf import settings

from orchestrator.dsl import DefinitionError, Workflow

_definitions: dict[tuple[str, int], Workflow] = {}


class UnknownWorkflow(LookupError):
    """No definition is registered under that name (and version)."""


def register(workflow: Workflow) -> Workflow:
    """Register a definition; registering the same name and version twice with another shape is an error."""
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


def all_versions(name: str) -> list[Workflow]:
    """Every registered version of ``name``, newest first."""
    return sorted((w for (n, _v), w in _definitions.items() if n == name), key=lambda w: -w.version)


def load_modules() -> None:
    """Import the modules named in ``BATON_WORKFLOW_MODULES``; each registers its workflows."""
    for module in settings.BATON_WORKFLOW_MODULES:
        importlib.import_module(module)
