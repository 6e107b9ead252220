"""README, "The API": its token commands and curl examples, replayed as written against the API (only the host is
this test's own, and ``$TASK`` is picked from the queue as README tells the reader to), with the tokens the documented
commands printed. An example that does not work as written is a defect of the README or the API."""

from __future__ import annotations

import io
import json
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from django.core.management import call_command
from django.test import Client

from approvals.models import HumanTask
from tests.factories import ExpenseInputFactory

pytestmark = pytest.mark.django_db

README = Path(__file__).resolve().parents[2] / "README.md"


def api_block() -> str:
    """The first ```bash block of README's "The API" section."""
    section = README.read_text().split("\n## The API\n", 1)[1]
    return section.split("```bash\n", 1)[1].split("```", 1)[0]


def curl_commands(block: str) -> list[list[str]]:
    """Each ``curl`` command of ``block`` as its arguments (continuation lines joined, comments dropped)."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [shlex.split(line, comments=True) for line in joined.splitlines() if line.startswith("curl ")]


def tokens_made_as_written(block: str, roles: Any) -> dict[str, str]:
    """Each ``NAME=$(... baton_api_token create USER ...)`` line of ``block`` run as written, for the test's user of
    that name: ``{"$NAME": the secret it printed}``. The secret must be all the command prints on standard output,
    as ``$(...)`` captures it."""
    tokens = {}
    for line in block.splitlines():
        made = re.fullmatch(r"(\w+)=\$\((.*baton_api_token create .*)\)", line.strip())
        if made is None:
            continue
        args = shlex.split(made[2].split("manage.py ", 1)[1])
        args[args.index("create") + 1] = getattr(roles, args[args.index("create") + 1]).username
        printed = io.StringIO()
        call_command(*args, stdout=printed, stderr=io.StringIO())
        secret = printed.getvalue().removesuffix("\n")
        assert secret.startswith("baton_")
        assert "\n" not in secret
        tokens[f"${made[1]}"] = secret
    return tokens


def replay(client: Client, args: list[str], variables: dict[str, str]) -> Any:
    """Send what ``curl args`` would send, each ``$NAME`` of ``variables`` (the tokens, ``$TASK``) filled in."""

    def filled(text: str) -> str:
        for name in sorted(variables, key=len, reverse=True):  # $STAFF_TOKEN before $TOKEN would match inside it
            text = text.replace(name, variables[name])
        return text

    headers: dict[str, str] = {}
    data = None
    url = ""
    rest = iter(args[1:])
    for arg in rest:
        if arg == "-H":
            name, _, value = next(rest).partition(": ")
            headers[name] = filled(value)
        elif arg == "-d":
            data = next(rest)
        elif arg.startswith("http"):
            url = filled(arg)
        else:
            assert arg == "-s", f"an option this replay does not know: {arg}"
    path = url.removeprefix("http://127.0.0.1:8000")
    content_type = headers.pop("Content-Type", "application/x-www-form-urlencoded")
    if data is None:
        return client.get(path, headers=headers)
    return client.post(path, data, content_type=content_type, headers=headers)


def test_the_readme_api_examples_work_as_written(roles):
    # given: the tokens, made by the documented commands for the users README names (the demo's operator, who
    # starts, and staff, who decides: who started an instance never decides it)
    block = api_block()
    variables = tokens_made_as_written(block, roles)
    assert set(variables) == {"$TOKEN", "$STAFF_TOKEN"}
    client = Client()
    curls = curl_commands(block)

    # when: each in README's order, the start twice ("the same key and body again"), $TASK being the queue's task
    # of the instance started above, as README tells the reader to pick it
    catalog, started, again, failed, queue = [
        replay(client, curl, variables) for curl in [curls[0], curls[1], curls[1], curls[2], curls[3]]
    ]
    mine = [task["id"] for task in queue.json()["results"] if task["instance"]["id"] == started.json()["id"]]
    assert len(mine) == 1, queue.json()
    variables["$TASK"] = str(mine[0])
    decided = replay(client, curls[4], variables)
    answers = [catalog, started, again, failed, queue, decided]

    # then: with the statuses its comments promise
    assert len(curls) == 5
    assert [a.status_code for a in answers] == [200, 201, 200, 200, 200, 200], [a.content[:300] for a in answers]
    assert again.json()["id"] == started.json()["id"]
    assert failed.json()["results"] == []
    assert decided.json()["decision"] == "approve"
    assert HumanTask.objects.get(pk=mine[0]).completed_by == roles.staff
    # and the start input README sends is valid by the schema the catalog gives for it ("its start input")
    sent = json.loads(re.search(r"-d '(\{\"workflow\".*?)'", block)[1])["input"]  # type: ignore[index]
    jsonschema.validate(sent, catalog.json()["start_input"])


@pytest.mark.parametrize("amount", ["42.00", 42.5, 42])
def test_a_decimal_start_field_is_described_as_a_decimal_not_an_integer(api_as, roles, amount):
    """Django's forms.DecimalField subclasses IntegerField: the schema called the expense's amount an integer, so a
    client that trusts the schema could not send 42.50 (or "42.00", as README does)."""
    # when
    schema = api_as(roles.staff).get("/api/workflows/expense_approval/").json()["start_input"]

    # then
    assert schema["properties"]["amount"]["type"] == ["string", "number"]
    jsonschema.validate({**ExpenseInputFactory(), "amount": amount}, schema)


def test_a_start_field_without_a_label_is_titled_by_its_name_as_the_page_shows_it(api_as, roles, register_workflow):
    """A form field declared without ``label=`` has none on the form class: the catalog said ``"title": ""``,
    where the start page shows Django's label made from the name ("Order ref" for order_ref)."""
    # given: a start form whose fields have no labels, and one that has
    from django import forms

    from orchestrator.dsl import Task, Workflow

    class Unlabelled(forms.Form):
        order_ref = forms.CharField(max_length=40)
        amount = forms.DecimalField(label="Amount (EUR)")

    register_workflow(
        Workflow(name="unlabelled_start", version=1, start_form=Unlabelled, steps=[Task("noop", lambda ctx: {})])
    )

    # when
    schema = api_as(roles.staff).get("/api/workflows/unlabelled_start/").json()["start_input"]

    # then
    assert schema["properties"]["order_ref"]["title"] == "Order ref"
    assert schema["properties"]["amount"]["title"] == "Amount (EUR)"


@pytest.mark.parametrize("offset", ["+01:00", "+0100", "+01"])
def test_an_offset_whose_plus_arrived_as_a_space_says_to_write_it_as_2b(api_as, roles, offset):
    """README: times carry their offset (`+01:00`). Typed into a URL unencoded, the `+` is a space; the answer said
    only "wrong format"."""
    # given
    client = api_as(roles.operator)

    # when
    typed = client.client.get(f"/api/instances/?started_after=2026-11-01T00:00:00{offset}", headers=client.headers)
    encoded = client.get("/api/instances/", {"started_after": f"2026-11-01T00:00:00{offset}"})

    # then
    assert typed.status_code == 400
    assert "%2B" in typed.json()["errors"]["started_after"][0]
    assert encoded.status_code == 200
