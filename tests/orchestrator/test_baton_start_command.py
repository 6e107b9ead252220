"""``baton_start``: starting an instance from the command line, and every refusal said plainly."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from orchestrator.models import WorkflowInstance

pytestmark = pytest.mark.django_db


def test_starts_the_latest_version_and_prints_the_instance_id(users):
    """Given a registered workflow and a user, when started with JSON input, then stdout holds the new id."""
    # given
    out = StringIO()

    # when
    call_command(
        "baton_start", "bench_approval", "--data", '{"n": 1}', "--user", "staff", stdout=out, stderr=StringIO()
    )

    # then
    instance = WorkflowInstance.objects.get(pk=int(out.getvalue().strip()))
    assert instance.workflow_name == "bench_approval"
    assert instance.data["n"] == 1
    assert instance.initiator == users.staff


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["bench_approval", "--data", "{not json"], "--data is not JSON"),
        (["bench_approval", "--data", '{"a": ' + "[" * 5000 + "]" * 5000 + "}"], "--data is not JSON"),
        (["bench_approval", "--data", '{"a": "x\\u0000y"}'], "the input was refused: input: input['a'] contains a NUL"),
        (["bench_approval", "--data", "[1, 2]"], "--data must be a JSON object, not list"),
        (["bench_approval", "--data", '{"n": 1, "n": 2}'], "--data is not JSON: the key 'n' is given twice"),
        (["no_such_flow"], "no workflow named 'no_such_flow' is registered (registered: "),
        (["bench_approval", "--user", "nobody"], "no user named 'nobody'"),
        (["order_fulfilment", "--data", "{}"], "the input was refused: "),
        (
            ["bench_approval", "--data", '{"approve": {"decision": "approve", "by": "ceo"}}'],
            "the input was refused: approve: This is where the workflow records what its step 'approve' did; a "
            "start's input cannot set it.",
        ),
    ],
)
def test_refusals_name_what_was_wrong_and_start_nothing(args, says):
    """Bad JSON, a non-object, an unknown workflow or user, input its start form refuses: an error saying which."""
    # when
    with pytest.raises(CommandError) as refused:
        call_command("baton_start", *args, stdout=StringIO(), stderr=StringIO())

    # then
    assert says in str(refused.value)
    assert not WorkflowInstance.objects.exists()
