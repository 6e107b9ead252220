"""The ``Allow`` header names only methods the endpoint answers: the API answers OPTIONS with 405 (the schema
documents it, ``api.conf``), and its ``Allow`` listed OPTIONS all the same, on that 405 and on every other answer,
so a client or tool that reads ``Allow`` to learn what it may send was told a method that is refused."""

from __future__ import annotations

import pytest

from orchestrator.services.instances import instance_start

pytestmark = pytest.mark.django_db

EXPENSE = {"employee": "Sam", "amount": "42.00", "category": "meals", "description": "Lunch"}
PATHS = [
    "/api/workflows/",
    "/api/workflows/expense_approval/",
    "/api/instances/",
    "/api/instances/{id}/",
    "/api/instances/{id}/steps/",
    "/api/instances/{id}/tasks/",
    "/api/instances/{id}/cancel/",
    "/api/instances/{id}/signals/",
    "/api/signals/",
    "/api/tasks/",
    "/api/tasks/{task}/",
    "/api/tasks/{task}/claim/",
    "/api/audit/events/",
    "/api/audit/export.jsonl",
    "/api/schema/",
]


@pytest.mark.parametrize("path", PATHS)
def test_every_method_the_allow_header_names_is_answered(api_as, roles, path):
    # given an instance with a task, and the endpoint's Allow header as an admin's GET or PUT gets it
    instance = instance_start("expense_approval", EXPENSE, initiator=roles.staff)
    url = path.format(id=instance.pk, task=instance.tasks.get().pk)
    api = api_as(roles.admin)
    allow = api.client.put(url, headers=api.headers)["Allow"]

    # when each method it names is sent
    named = [method.strip() for method in allow.split(",") if method.strip()]
    refused = [method for method in named if api.client.generic(method, url, headers=api.headers).status_code == 405]

    # then none of them is refused as not allowed
    assert named
    assert refused == [], f"{url}: Allow: {allow}"


def test_every_api_view_leaves_options_out_of_its_methods():
    # given every route of the API's urls module (a view added later included)
    from api import urls

    def views(patterns):
        for pattern in patterns:
            if hasattr(pattern, "url_patterns"):
                yield from views(pattern.url_patterns)
            else:
                yield pattern.callback

    # then each class-based view's methods, which its Allow header lists, leave OPTIONS out
    def methods(view) -> list[str]:
        view_class = getattr(view, "cls", getattr(view, "view_class", None))
        given = (getattr(view, "initkwargs", None) or {}).get("http_method_names")
        return given or getattr(view_class, "http_method_names", [])

    offering = [view.__name__ for view in views(urls.urlpatterns) if "options" in methods(view)]
    assert offering == []
