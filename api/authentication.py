"""How an API request says who it is: ``Authorization: Bearer <token>`` (a personal API token) or the browser's
session cookie (with its CSRF token on every unsafe method, as DRF's SessionAuthentication enforces)."""

from __future__ import annotations

from typing import Any

from rest_framework import authentication, exceptions
from rest_framework.request import Request

from api.tokens import refusal, token_for_secret


def _refused(request: Request, error: str, detail: str) -> exceptions.AuthenticationFailed:
    """The 401 for a Bearer header that was sent and refused; ``error`` (RFC 6750, 3.1) goes into the challenge."""
    request._bearer_error = error
    return exceptions.AuthenticationFailed(detail)


class BearerTokenAuthentication(authentication.BaseAuthentication):
    """``Authorization: Bearer baton_…``: the token must exist, be neither revoked nor expired, and belong to an
    active user. Another scheme (Basic, …) is left to the next authenticator; a malformed or unknown Bearer
    token is 401, never a fall-through to the session (a script must learn its token is wrong)."""

    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.lower().encode():
            return None
        if len(header) != 2:
            raise _refused(request, "invalid_request", "Send the header as 'Authorization: Bearer <token>'.")
        try:
            secret = header[1].decode("ascii")
        except UnicodeDecodeError:
            raise _refused(request, "invalid_token", "The token holds characters no Baton token has.") from None
        token = token_for_secret(secret)
        if token is None:
            raise _refused(request, "invalid_token", refusal(secret))
        return token.user, token

    def authenticate_header(self, request: Request) -> str:
        """The challenge of a 401 (present, so an unauthenticated request is 401 rather than 403), with RFC 6750's
        ``error`` when a Bearer token was sent and refused (``invalid_token``) or the header was malformed
        (``invalid_request``), so a client tells "my token is bad" from "I sent none"."""
        error = getattr(request, "_bearer_error", None)
        return f'{self.keyword} realm="api"' + (f', error="{error}"' if error else "")
