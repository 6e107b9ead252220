"""The API tokens page: a person's own tokens, creating one (its secret shown once) and revoking one."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from api.forms import TokenCreateForm
from api.models import ApiToken
from api.tokens import token_create, token_revoke, tokens_of
from orchestrator.accounts import hidden_404, request_meta
from orchestrator.audit import Actor
from orchestrator.typing import AuthedRequest

# The session key holding a just-created secret until the page after the redirect shows it (once).
NEW_SECRET = "api_token_new_secret"  # noqa: S105 (a session key, not a secret)


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
                request.session[NEW_SECRET] = {"id": new.token.pk, "secret": new.secret}
                return redirect("api:tokens")
        status = 400
    new_secret = request.session.pop(NEW_SECRET, None) if request.method == "GET" else None
    now = timezone.now()
    rows = [(token, token.status(now)) for token in tokens_of(request.user)[:200]]
    context = {"form": form, "rows": rows, "new_secret": new_secret, "active_nav": "tokens"}
    response = render(request, "api/tokens.html", context, status=status)
    # The secret is on this page once: never keep it in a cache.
    response["Cache-Control"] = "no-store"
    return response


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
