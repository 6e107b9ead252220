"""How an API request says who it is: ``Authorization: Bearer <token>`` (a personal API token) or the browser's
session cookie (with its CSRF token on every unsafe method, as DRF's SessionAuthentication enforces)."""

from __future__ import annotations

import re
from typing import Any

from rest_framework import authentication, exceptions
from rest_framework.request import Request

from api.tokens import refusal, token_for_secret

# An HTTP authentication scheme's name (RFC 9110's token), short enough to repeat in a message.
SCHEME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,30}")


def other_scheme(request: Any) -> str | None:
    """What to tell a client whose ``Authorization`` header is not a Bearer token (``Token <x>``, ``Basic ...``, a
    token with no scheme before it), when nothing else authenticated it; None when it sent no such header. The
    header is left to the session (a proxy in front may send its own Basic credentials with a browser's requests),
    so it is only named in the 401. The credential is never repeated; the scheme only when it is a plain name."""
    parts = authentication.get_authorization_header(request).split()
    if not parts or parts[0].lower() == BearerTokenAuthentication.keyword.lower().encode():
        return None
    expected = f"send 'Authorization: {BearerTokenAuthentication.keyword} <token>'"
    if len(parts) == 1:
        return f"The Authorization header holds no scheme before its value: {expected}."
    scheme = parts[0].decode("latin-1")
    named = f"the scheme {scheme!r}" if SCHEME.fullmatch(scheme) else "another scheme"
    return f"The Authorization header uses {named}, which this API does not take: {expected}."


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
