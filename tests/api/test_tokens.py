"""API tokens: stored hashed, shown once, expiring, revocable on the page and by the command, audited."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone

from api.models import ApiToken
from api.tokens import TOKENS_CHAIN, hash_secret, token_create, token_revoke
from orchestrator.audit import Actor, verify_trail
from orchestrator.models import AuditEvent
from tests.api.conftest import ApiClient

pytestmark = pytest.mark.django_db


def test_a_token_is_stored_only_as_its_hash_and_its_creation_is_audited(roles):
    # when
    new = token_create(roles.staff, "billing sync")

    # then
    stored = ApiToken.objects.get(pk=new.token.pk)
    assert new.secret.startswith("baton_")
    assert len(new.secret) > 40
    assert stored.key_hash == hash_secret(new.secret)
    assert new.secret not in str(ApiToken.objects.filter(pk=stored.pk).values().first())
    event = AuditEvent.objects.get(chain=TOKENS_CHAIN, action="token.created")
    assert event.actor_label == "user:staff"
    assert event.payload["prefix"] == stored.prefix
    assert new.secret not in str(event.payload)
    assert not verify_trail(TOKENS_CHAIN).breaks


def test_a_token_authenticates_as_its_user_and_records_its_last_use(roles):
    # given
    new = token_create(roles.staff, "script")

    # when
    response = ApiClient(new.secret).get("/api/tasks/")

    # then
    assert response.status_code == 200
    assert ApiToken.objects.get(pk=new.token.pk).last_used_at is not None


@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param(lambda t: ApiToken.objects.filter(pk=t.pk).update(revoked_at=timezone.now()), id="revoked"),
        pytest.param(
            lambda t: ApiToken.objects.filter(pk=t.pk).update(expires_at=timezone.now() - timedelta(seconds=1)),
            id="expired",
        ),
        pytest.param(lambda t: type(t.user).objects.filter(pk=t.user_id).update(is_active=False), id="user left"),
    ],
)
def test_a_revoked_or_expired_token_or_one_of_a_deactivated_user_is_401(roles, spoil):
    # given
    new = token_create(roles.staff, "script")
    spoil(new.token)

    # when
    response = ApiClient(new.secret).get("/api/tasks/")

    # then
    assert response.status_code == 401
    assert response["Content-Type"] == "application/problem+json"
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "header",
    ["Bearer baton_not-a-real-token", "Bearer", "Bearer a b", "Bearer ünïcode", "Bearer " + "x" * 5000],
)
def test_a_bad_bearer_header_is_401_with_a_problem(roles, header):
    # when
    response = Client().get("/api/tasks/", headers={"Authorization": header})

    # then
    assert response.status_code == 401
    assert response.json()["status"] == 401


@pytest.mark.parametrize(
    ("name", "expires", "message"),
    [
        ("", None, "Name"),
        ("x" * 101, None, "at most 100"),
        ("nul\x00", None, "NUL"),
        ("ok", timezone.now() - timedelta(minutes=1), "future"),
        ("ok", timezone.now() + timedelta(days=5000), "days from now"),
    ],
)
def test_bad_names_and_expiries_are_refused(roles, name, expires, message):
    # when / then
    with pytest.raises(ValidationError, match=message):
        token_create(roles.staff, name, expires_at=expires)
    assert not ApiToken.objects.exists()


def test_revoking_someone_elses_token_is_not_found_and_revoking_twice_writes_once(roles):
    # given
    token = token_create(roles.staff, "script").token

    # when / then
    with pytest.raises(ApiToken.DoesNotExist):
        token_revoke(token.pk, owner=roles.staff2, actor=Actor.of(roles.staff2))
    token_revoke(token.pk, owner=roles.staff, actor=Actor.of(roles.staff))
    token_revoke(token.pk, owner=roles.staff, actor=Actor.of(roles.staff))
    assert AuditEvent.objects.filter(chain=TOKENS_CHAIN, action="token.revoked").count() == 1


def test_the_page_shows_a_new_secret_once_and_revokes(roles):
    # given
    client = Client()
    client.force_login(roles.staff)

    # when
    created = client.post("/api/tokens/", {"name": "nightly report", "expires": "30"})
    first = client.get("/api/tokens/")
    second = client.get("/api/tokens/")

    # then
    token = ApiToken.objects.get(user=roles.staff)
    assert created.status_code == 302
    secret = first.context["new_secret"]["secret"]
    assert hash_secret(secret) == token.key_hash
    assert secret.encode() in first.content
    assert first["Cache-Control"] == "no-store"
    assert secret.encode() not in second.content
    assert token.expires_at is not None
    assert timedelta(days=29) < token.expires_at - timezone.now() <= timedelta(days=30)

    # when
    revoked = client.post(f"/api/tokens/{token.pk}/revoke/")

    # then
    assert revoked.status_code == 302
    assert ApiToken.objects.get(pk=token.pk).revoked_at is not None
    assert ApiClient(secret).get("/api/tasks/").status_code == 401


def test_the_page_keeps_what_was_typed_when_the_date_is_missing(roles):
    # given
    client = Client()
    client.force_login(roles.staff)

    # when
    response = client.post("/api/tokens/", {"name": "report", "expires": "date", "expires_at": ""})

    # then
    assert response.status_code == 400
    assert b'value="report"' in response.content
    assert b"pick the date and time" in response.content
    assert not ApiToken.objects.exists()


def test_the_command_creates_lists_and_revokes(roles):
    # given
    out, err = io.StringIO(), io.StringIO()

    # when
    call_command("baton_api_token", "create", "staff", "--name", "ci", "--expires-in-days", "7", stdout=out, stderr=err)
    secret = out.getvalue().strip().splitlines()[-1]

    # then
    token = ApiToken.objects.get(user=roles.staff)
    assert token.key_hash == hash_secret(secret)
    assert AuditEvent.objects.get(chain=TOKENS_CHAIN, action="token.created").actor_label == "system:command"
    # the secret alone on standard output; what it is, on standard error, says so whole (no line ending in a colon)
    assert out.getvalue() == f"{secret}\n"
    assert err.getvalue().strip().endswith("Its secret is on standard output, shown this once: keep it now.")
    assert secret not in err.getvalue()
    listing = io.StringIO()
    call_command("baton_api_token", "list", "staff", stdout=listing)
    assert token.prefix in listing.getvalue()
    assert secret not in listing.getvalue()
    call_command("baton_api_token", "revoke", str(token.pk), stdout=io.StringIO())
    assert ApiToken.objects.get(pk=token.pk).revoked_at is not None


def test_the_command_says_a_token_revoked_already_was_not_revoked_again(roles):
    """Given a token the command revoked, when it is revoked a second time, then the command says it was revoked
    already (and when), not "Revoked" again, and the trail holds one revocation."""
    # given
    token = token_create(roles.staff, "ci").token
    first = io.StringIO()
    call_command("baton_api_token", "revoke", str(token.pk), stdout=first)

    # when
    second = io.StringIO()
    call_command("baton_api_token", "revoke", str(token.pk), stdout=second)

    # then
    assert first.getvalue().startswith(f"Revoked token {token.pk} “ci” of staff.")
    assert second.getvalue().startswith(f"The token {token.pk} “ci” of staff was revoked already, at ")
    assert "UTC" in second.getvalue()
    assert AuditEvent.objects.filter(chain=TOKENS_CHAIN, action="token.revoked", subject_id=token.pk).count() == 1


def test_a_creation_and_a_revocation_on_the_page_are_each_exactly_one_event_with_actor_and_request(roles):
    """One path records tokens (api/tokens.py): the whole trail, every chain, holds one event per change."""
    # given
    client = Client(HTTP_USER_AGENT="token-test/1.0")
    client.force_login(roles.staff)

    # when
    client.post("/api/tokens/", {"name": "nightly report", "expires": "never"})
    token = ApiToken.objects.get(user=roles.staff)
    client.post(f"/api/tokens/{token.pk}/revoke/")
    client.post(f"/api/tokens/{token.pk}/revoke/")  # a second click: already revoked, nothing more to record

    # then
    created = AuditEvent.objects.filter(action="token.created")
    revoked = AuditEvent.objects.filter(action="token.revoked")
    assert created.count() == 1
    assert revoked.count() == 1
    for event, path in ((created.get(), "/api/tokens/"), (revoked.get(), f"/api/tokens/{token.pk}/revoke/")):
        assert (event.chain, event.subject_type, event.subject_id) == (TOKENS_CHAIN, "api_token", token.pk)
        assert (event.actor_label, event.actor_id) == ("user:staff", roles.staff.pk)
        assert (event.payload["user"], event.payload["user_id"], event.payload["name"]) == (
            "staff",
            roles.staff.pk,
            "nightly report",
        )
        assert event.request_meta["path"] == path
        assert event.request_meta["user_agent"] == "token-test/1.0"
        assert event.request_id
    assert not verify_trail(TOKENS_CHAIN).breaks


def test_the_command_records_one_event_per_change_as_the_system(roles):
    # when
    call_command("baton_api_token", "create", "staff", "--name", "ci", stdout=io.StringIO(), stderr=io.StringIO())
    token = ApiToken.objects.get(user=roles.staff)
    call_command("baton_api_token", "revoke", str(token.pk), stdout=io.StringIO(), stderr=io.StringIO())

    # then
    events = AuditEvent.objects.filter(action__in=["token.created", "token.revoked"]).order_by("seq")
    assert [(e.action, e.actor_label, e.subject_id) for e in events] == [
        ("token.created", "system:command", token.pk),
        ("token.revoked", "system:command", token.pk),
    ]


def test_a_new_secret_is_never_stored_on_the_server_while_it_waits_to_be_shown(roles):
    # given
    from django.contrib.sessions.models import Session

    client = Client()
    client.force_login(roles.staff)

    # when: created; what the server holds before the page that shows it
    client.post("/api/tokens/", {"name": "billing sync", "expires": "never"})
    held = [str(session.get_decoded()) + session.session_data for session in Session.objects.all()]
    shown = client.get("/api/tokens/")

    # then: only the hash is on the server (the session store is a table anyone with the database can read)
    secret = shown.context["new_secret"]["secret"]
    assert hash_secret(secret) == ApiToken.objects.get(user=roles.staff).key_hash
    assert not [text for text in held if secret in text]


def test_a_new_secret_is_shown_only_to_its_owner(roles):
    # given: staff created a token; the waiting secret travels to the staff2 browser (a copied cookie)
    staff, other = Client(), Client()
    staff.force_login(roles.staff)
    other.force_login(roles.staff2)
    staff.post("/api/tokens/", {"name": "billing sync", "expires": "never"})
    for name, morsel in staff.cookies.items():
        if name != settings.SESSION_COOKIE_NAME:
            other.cookies[name] = morsel.value

    # when
    page = other.get("/api/tokens/")

    # then
    assert page.context["new_secret"] is None


@pytest.mark.parametrize("where", ["name", "username"])
def test_the_command_refuses_bytes_that_are_not_utf8_with_a_message(roles, where):
    # given a command line holding a byte that is not UTF-8 (Python reads it as a lone surrogate)
    junk = b"ops\xff".decode("utf-8", "surrogateescape")
    username, name = (roles.staff.username, junk) if where == "name" else (junk, "billing sync")

    # when / then: a message and exit status 1, not a UnicodeEncodeError from the database driver
    with pytest.raises(CommandError):
        call_command("baton_api_token", "create", username, "--name", name)
    assert not ApiToken.objects.exists()


def test_a_naive_expiry_is_read_in_the_sites_time_zone_and_a_past_one_is_refused(roles):
    # given a naive time (a script's datetime.now() + ...), an hour ahead and an hour back in the site's zone
    ahead = timezone.localtime().replace(tzinfo=None) + timedelta(hours=1)
    back = ahead - timedelta(hours=2)

    # when / then: the first is stored as that wall-clock time in the site's zone; the second is refused
    token = token_create(roles.staff, "naive", expires_at=ahead).token
    assert timezone.localtime(token.expires_at).replace(tzinfo=None) == ahead
    with pytest.raises(ValidationError, match="future"):
        token_create(roles.staff, "naive past", expires_at=back)


@pytest.mark.parametrize("form", ["Bearer  {secret}", "bearer {secret}", "Bearer\t{secret}", "Bearer {secret} "])
def test_a_valid_token_is_read_whatever_the_spacing_and_case_of_the_scheme(roles, form):
    # given a valid token sent with two spaces, a tab, a trailing space or the scheme in lower case (RFC 7235:
    # the scheme is case-insensitive; clients differ in spacing)
    secret = token_create(roles.staff, "script").secret

    # when / then: it authenticates, as with one space
    response = Client().get("/api/tasks/", headers={"Authorization": form.format(secret=secret)})
    assert response.status_code == 200


def test_a_token_of_a_deleted_user_is_401_and_gone_with_them(roles):
    # given a token the command made for an account that never acted (so nothing in the audit trail protects it)
    account = type(roles.staff).objects.create(username="leaver")
    new = token_create(account, "script", actor=Actor.system("command"))

    # when the account is deleted
    account.delete()

    # then its token went with it, and the secret is refused like any unknown one
    assert not ApiToken.objects.filter(pk=new.token.pk).exists()
    response = ApiClient(new.secret).get("/api/tasks/")
    assert response.status_code == 401
    assert response["Content-Type"] == "application/problem+json"


@pytest.mark.parametrize(
    ("spoil", "said"),
    [
        (lambda t: ApiToken.objects.filter(pk=t.pk).update(revoked_at=timezone.now()), "was revoked"),
        (
            lambda t: ApiToken.objects.filter(pk=t.pk).update(expires_at=timezone.now() - timedelta(seconds=1)),
            "expired at",
        ),
        (lambda t: type(t.user).objects.filter(pk=t.user_id).update(is_active=False), "deactivated"),
        (lambda t: ApiToken.objects.filter(pk=t.pk).update(key_hash=hash_secret("baton_other")), "not a token"),
    ],
    ids=["revoked", "expired", "user left", "unknown"],
)
def test_a_refused_token_is_told_why_and_marked_invalid_token(roles, spoil, said):
    # given a token that worked, then was revoked, expired, lost its account or never was (a typo)
    new = token_create(roles.staff, "nightly sync")
    spoil(new.token)

    # when its holder calls the API with it
    response = ApiClient(new.secret).get("/api/tasks/")

    # then the 401 says which, so the integration's log tells its owner what to do (a new token, not a hunt for a
    # typo), and the challenge says the token is the problem (RFC 6750, 3.1)
    assert response.status_code == 401
    assert said in response.json()["detail"]
    assert response.json()["code"] == "authentication_failed"
    assert response["WWW-Authenticate"] == 'Bearer realm="api", error="invalid_token"'


def test_a_request_without_a_token_gets_the_plain_challenge(roles):
    # when a request carries no credentials at all
    response = Client().get("/api/tasks/")

    # then the challenge names no error (RFC 6750, 3.1: none for a request that sent no token)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="api"'


@pytest.mark.parametrize(
    ("header", "said"),
    [
        ("Token baton_abc", "uses the scheme 'Token', which this API does not take"),
        ("Basic YTpi", "uses the scheme 'Basic', which this API does not take"),
        ("baton_abc", "holds no scheme before its value"),
        ("Tök\u00e9n abc", "uses another scheme"),
    ],
)
def test_another_scheme_than_bearer_is_a_401_naming_the_scheme_the_api_takes(roles, header, said):
    """``Authorization: Token <x>`` was answered "Authentication credentials were not provided.": the client did
    provide some, in a scheme the API does not read."""
    # when
    response = Client().get("/api/tasks/", headers={"Authorization": header})

    # then
    assert response.status_code == 401
    assert response["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert said in problem["detail"], problem
    assert "send 'Authorization: Bearer <token>'" in problem["detail"], problem
    assert list(problem["errors"]) == ["Authorization"], problem
    assert "abc" not in problem["detail"]  # the credential is never repeated
    assert response["WWW-Authenticate"] == 'Bearer realm="api"'


def test_another_scheme_beside_a_session_leaves_the_session_signed_in(roles):
    """A proxy in front may send its own Basic credentials with a browser's requests: the session still counts."""
    # given
    client = Client()
    client.force_login(roles.staff)

    # when
    response = client.get("/api/tasks/", headers={"Authorization": "Basic YTpi"})

    # then
    assert response.status_code == 200


JSON = {"Accept": "application/json"}


@pytest.mark.parametrize(
    ("method", "path"),
    [("get", "/api/tokens/"), ("post", "/api/tokens/"), ("post", "/api/tokens/1/revoke/")],
)
def test_a_json_client_not_signed_in_on_the_tokens_page_is_told_what_the_page_is_not_redirected(roles, method, path):
    """The page under /api/ answered a script with a 302 to the sign-in page (and a 200 of HTML after it): a JSON
    client learns that it is a page for people and where tokens come from, as problem+json."""
    # given: a script with a token of its own, and one with none
    secret = token_create(roles.staff, "script").secret
    for headers in (JSON, {**JSON, "Authorization": f"Bearer {secret}"}):
        # when
        response = getattr(Client(), method)(path, headers=headers)

        # then
        assert response.status_code == 403, (headers, response.status_code)
        assert response["Content-Type"] == "application/problem+json"
        problem = response.json()
        assert problem["code"] == "session_required"
        assert "baton_api_token" in problem["detail"]
    assert ApiToken.objects.count() == 1


def test_a_json_client_signed_in_gets_a_problem_for_a_method_or_a_token_not_its_own(roles):
    # given
    token = token_create(roles.staff, "script").token
    client = Client()
    client.force_login(roles.staff2)

    # when
    foreign = client.post(f"/api/tokens/{token.pk}/revoke/", headers=JSON)
    wrong_method = client.get(f"/api/tokens/{token.pk}/revoke/", headers=JSON)

    # then
    assert (foreign.status_code, foreign["Content-Type"]) == (404, "application/problem+json")
    assert (wrong_method.status_code, wrong_method["Content-Type"]) == (405, "application/problem+json")
    assert wrong_method["Allow"] == "POST"
    assert ApiToken.objects.get(pk=token.pk).revoked_at is None


def test_a_json_client_posting_to_the_page_without_its_csrf_token_gets_a_problem(roles):
    # given: a session, and a client that checks CSRF as a browser's server does
    client = Client(enforce_csrf_checks=True)
    client.force_login(roles.staff)

    # when
    response = client.post("/api/tokens/", {"name": "x", "expires": "never"}, headers=JSON)

    # then
    assert response.status_code == 403
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["code"] == "csrf_failed"


def test_a_browser_on_the_tokens_page_gets_the_pages_answers_as_before(roles):
    # when: a browser's Accept, signed out
    response = Client().get("/api/tokens/", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})

    # then
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")
