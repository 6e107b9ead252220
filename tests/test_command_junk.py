"""Every management command Baton ships, given junk arguments on the real database: a ``CommandError`` saying what
was wrong (exit status 1 from the command line), never a traceback. Huge numbers matter on PostgreSQL, whose
bigint ends where Python's int does not."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

HUGE = "99999999999999999999"
LONG = "k" * 300

CASES = [
    # baton_api_token (README, "The API")
    (["baton_api_token", "create", "nobody", "--name", "x"], "No user named"),
    (["baton_api_token", "create", "alice", "--name", ""], "Name"),
    (["baton_api_token", "create", "alice", "--name", LONG], "at most"),
    (["baton_api_token", "create", "alice", "--name", "x", "--expires-in-days", "0"], "--expires-in-days"),
    (["baton_api_token", "create", "alice", "--name", "x", "--expires-in-days", "-3"], "--expires-in-days"),
    (["baton_api_token", "create", "alice", "--name", "x", "--expires-in-days", HUGE], "--expires-in-days"),
    (["baton_api_token", "create", "alice", "--name", "x", "--expires-in-days", "soon"], "expires"),
    (["baton_api_token", "list", "nobody"], "No user named"),
    (["baton_api_token", "revoke", HUGE], "No token"),
    (["baton_api_token", "revoke", "-1"], "No token"),
    (["baton_api_token", "revoke", "abc"], "token_id"),
    (["baton_api_token", "frobnicate"], "frobnicate"),
    # baton_start (README, "Your first workflow")
    (["baton_start", "nosuch"], "no workflow named"),
    (["baton_start", "expense_approval", "--data", "[1]"], "JSON object"),
    (["baton_start", "expense_approval", "--data", "{"], "not JSON"),
    (["baton_start", "expense_approval", "--data", '{"amount": "x"}'], "refused"),
    (["baton_start", "expense_approval", "--user", "nobody"], "no user named"),
    (["baton_start", "expense_approval", "--key", LONG], "refused"),
    # a NUL, or a lone surrogate (argv bytes that are not UTF-8), reached PostgreSQL: a DataError's traceback
    (["baton_start", "expense_approval", "--user", "ada\x00"], "no user named"),
    (["baton_start", "expense_approval", "--user", "ada\udc80"], "no user named"),
    (["baton_start", "expense_approval", "--key", "k\udc80"], "refused"),
    (["baton_start", "expense_approval", "--data", "[" * 100000 + "]" * 100000], "not JSON"),
    # baton_signal
    (["baton_signal", "ev", "--id", "x"], "Name the instance"),
    (["baton_signal", "ev", "--id", "x", "--instance", HUGE], "No instance"),
    (["baton_signal", "ev", "--id", "x", "--instance", "-1"], "No instance"),
    (["baton_signal", "ev", "--id", "x", "--instance", "one"], "--instance"),
    (["baton_signal", "ev", "--id", "x", "--instance", "1", "--payload", "[1]"], "JSON object"),
    (["baton_signal", "ev", "--id", "x", "--instance", "1", "--payload", "{"], "not JSON"),
    (["baton_signal", "ev", "--id", "", "--instance", "1"], "signal_id"),
    (["baton_signal", "ev", "--id", LONG, "--instance", "1"], "at most"),
    (["baton_signal", "ev", "--id", "x", "--business-key", LONG], "business"),
    (["baton_signal", "ev", "--id", "x", "--business-key", "SO-0", "--workflow", LONG], ""),
    # baton_verify_audit (README, "Audit trail")
    (["baton_verify_audit", "--instance", HUGE], "no events"),
    (["baton_verify_audit", "--instance", "-1"], "no events"),
    (["baton_verify_audit", "--chain", LONG], "no events"),
    # "²" passes str.isdigit() and int() refuses it: a ValueError's traceback
    (["baton_verify_audit", "--chain", "instance:²"], "no events"),
    (["baton_verify_audit", "--seals", "/nonexistent/seals.jsonl"], "cannot read"),
    (["baton_verify_audit", "--file", "/nonexistent/export.jsonl"], "cannot read"),
    (["baton_verify_audit", "--file", "/"], "cannot read"),
    # baton_audit_seal, baton_audit_grants
    (["baton_audit_seal", "--path", "/nonexistent/dir/seals.jsonl"], "cannot write"),
    (["baton_audit_seal", "--path", "/"], "cannot write"),
    (["baton_audit_grants", "bob; DROP TABLE x"], "not a plain PostgreSQL role name"),
    (["baton_audit_grants", ""], "not a plain PostgreSQL role name"),
    (["baton_audit_grants", "no_such_role_here", "--apply"], "no_such_role_here"),
    # baton_demo_data in production mode (the tests run in it)
    (["baton_demo_data"], "--force"),
]


@pytest.mark.parametrize(("args", "says"), CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_junk_arguments_are_a_command_error_saying_what_was_wrong(args, says):
    # given
    UserFactory(username="alice")

    # when / then
    with pytest.raises(CommandError, match=says if says else None) as refused:
        call_command(*args, stdout=StringIO(), stderr=StringIO())
    assert "Traceback" not in str(refused.value)
