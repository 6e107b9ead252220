"""System checks of the registered workflow definitions (``manage.py check``, and every command that runs checks:
``migrate``, ``runserver``)."""

from __future__ import annotations

from typing import Any

from django.core import checks
from django.db import DatabaseError


def workflow_forms(app_configs: Any = None, **_kwargs: Any) -> list[checks.CheckMessage]:
    """An error per form of a registered definition (every version: instances still run old ones) that raises when
    built or when it checks an empty input: a start form, a form step's, a signal's.

    The DSL checks that a form is a form class (orchestrator/dsl.py); what its ``__init__`` or ``clean()`` does is
    the workflow's own code, and a ``clean()`` reading ``self.cleaned_data["amount"]`` raises KeyError whenever the
    amount is missing or invalid: the start page, the API and the task page answered 500 to exactly the input that
    needed a message. An empty input is that case for every required field. A form that needs the database when
    built is passed over while the database cannot answer. Returns the errors; raises nothing."""
    from orchestrator import registry
    from orchestrator.dsl import Human, Signal
    from orchestrator.inputs import bound_form

    found: list[checks.CheckMessage] = []
    for workflow in registry.all_definitions():
        forms = [("start_form", workflow.start_form)] + [
            (f"step {node.name!r} form", node.form)
            for node in workflow.nodes.values()
            if isinstance(node, Human | Signal) and node.form is not None
        ]
        for where, form in forms:
            if form is None:
                continue
            try:
                form()
                bound_form(form, {}).is_valid()
            except DatabaseError:
                continue
            except Exception as error:
                found.append(
                    checks.Error(
                        f"{workflow.key}, {where} {form.__qualname__}: raises {type(error).__name__}: {error}",
                        hint="A form's __init__ and clean() must not raise on a missing or invalid field: in "
                        "clean(), read self.cleaned_data.get(name) (a field that failed is not in it) and raise "
                        "forms.ValidationError for what is wrong.",
                        obj=workflow.key,
                        id="baton.E010",
                    )
                )
    return found
