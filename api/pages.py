"""The API tokens page: a person's own tokens, creating one (its secret shown once) and revoking one.

Decision: it stays a page under ``/api/tokens/``, where the user menu, README and people's bookmarks find it, and
it is not an endpoint of the API: a token is created by a person signed in with a browser (its secret shown once,
on a page) or by an administrator with ``manage.py baton_api_token``, never with another token. What a JSON client
that lands on it gets (``Accept: application/json``, as a script sends) is a problem+json refusal saying so, not
the sign-in page's redirect or an HTML page (:func:`answers_json_clients`); a browser's answers are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core import signing
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from api.forms import TokenCreateForm
from api.models import ApiToken
from api.problems import problem_response
from api.tokens import token_create, token_revoke, tokens_of
from orchestrator.accounts import hidden_404, request_meta
from orchestrator.audit import Actor
from orchestrator.middleware import wants_json
from orchestrator.typing import AuthedRequest

# The cookie carrying a just-created secret to the page after the redirect, which shows it once and deletes it.
# The browser holds it for those two requests, signed and tied to its owner: the server keeps only the hash (a
# session would put the secret in the session table, readable by anyone who reads the database, for as long as
# the page after the redirect is not loaded).
NEW_SECRET = "baton_new_api_token"  # noqa: S105 (a cookie name, not a secret)
NEW_SECRET_SALT = "api.pages.new_secret"  # noqa: S105
NEW_SECRET_MAX_AGE = 300  # seconds: the redirect follows at once; a page opened later shows nothing


# What a JSON client is told when it is not a browser session: the page is for people, and where tokens come from.
FOR_PEOPLE = (
    "This is the API tokens page, for people signed in with a browser (/login/), not an endpoint of the API: an "
    "API token does not open it. Create and revoke tokens on it, or with `manage.py baton_api_token`."
)


def answers_json_clients(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """``view``, with problem+json refusals for a client that wants JSON: not signed in with a browser session
    (a Bearer token included) 403 ``session_required`` saying what the page is, instead of a redirect to the
    sign-in page; a method the page does not take 405 with ``Allow``; a token not theirs 404. Outermost, before
    ``login_required``. What the page answers when it does answer (its HTML, its redirects after a form) stays."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not wants_json(request):
            return view(request, *args, **kwargs)
        if not request.user.is_authenticated:
            return problem_response(request, 403, FOR_PEOPLE, "session_required")
        try:
            response = view(request, *args, **kwargs)
        except Http404:
            return problem_response(request, 404, "No such token of yours.", "not_found")
        if response.status_code == 405:
            allowed = response.get("Allow", "")
            refusal = problem_response(request, 405, f"This page takes {allowed or 'no other method'}.", "not_allowed")
            refusal["Allow"] = allowed
            return refusal
        return response

    return wrapped


def _waiting_secret(request: AuthedRequest) -> dict[str, Any] | None:
    """The secret the redirect carried, if it is this user's and fresh; else None."""
    signed = request.COOKIES.get(NEW_SECRET)
    if not signed:
        return None
    try:
        waiting = signing.loads(signed, salt=NEW_SECRET_SALT, max_age=NEW_SECRET_MAX_AGE)
    except signing.BadSignature:
        return None
    if not isinstance(waiting, dict) or waiting.get("user") != request.user.pk:
        return None
    return {"id": waiting.get("id"), "secret": waiting.get("secret")}


@answers_json_clients
@login_required
@require_http_methods(["GET", "HEAD", "POST"])
def tokens(request: AuthedRequest) -> HttpResponse:
    """GET: the person's tokens and the form; POST: create one, then show its secret once on the next GET."""
    form = TokenCreateForm(request.POST if request.method == "POST" else None)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                new = token_create(
                    request.user,
                    form.cleaned_data["name"],
                    expires_at=form.expiry(),
                    request_meta=request_meta(request),
                )
            except ValidationError as exc:
                form.add_error(None, " ".join(exc.messages))
            else:
                answer = redirect("api:tokens")
                answer.set_cookie(
                    NEW_SECRET,
                    signing.dumps(
                        {"user": request.user.pk, "id": new.token.pk, "secret": new.secret}, salt=NEW_SECRET_SALT
                    ),
                    max_age=NEW_SECRET_MAX_AGE,
                    path=reverse("api:tokens"),
                    secure=settings.SESSION_COOKIE_SECURE,
                    httponly=True,
                    samesite="Strict",
                )
                return answer
        status = 400
    new_secret = _waiting_secret(request) if request.method == "GET" else None
    now = timezone.now()
    rows = [(token, token.status(now)) for token in tokens_of(request.user)[:200]]
    context = {"form": form, "rows": rows, "new_secret": new_secret, "active_nav": "tokens"}
    response = render(request, "api/tokens.html", context, status=status)
    # The secret is on this page once: never keep it in a cache, nor the cookie that brought it.
    response["Cache-Control"] = "no-store"
    if NEW_SECRET in request.COOKIES and request.method == "GET":
        response.delete_cookie(NEW_SECRET, path=reverse("api:tokens"), samesite="Strict")
    return response


@answers_json_clients
@require_POST
@login_required
def token_revoke_view(request: AuthedRequest, token_id: int) -> HttpResponse:
    """Revoke one of the person's own tokens (anyone else's is 404)."""
    try:
        token = token_revoke(
            token_id, owner=request.user, actor=Actor.of(request.user), request_meta=request_meta(request)
        )
    except ApiToken.DoesNotExist:
        raise hidden_404(request, "api_token", ApiToken, token_id, "No such token.") from None
    messages.success(request, f"Revoked “{token.name}”: it no longer works.")
    return redirect("api:tokens")
