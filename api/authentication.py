"""How an API request says who it is: ``Authorization: Bearer <token>`` (a personal API token) or the browser's
session cookie (with its CSRF token on every unsafe method, as DRF's SessionAuthentication enforces)."""

from __future__ import annotations

from typing import Any

from rest_framework import authentication, exceptions
from rest_framework.request import Request

from api.tokens import token_for_secret


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
            raise exceptions.AuthenticationFailed("Send the header as 'Authorization: Bearer <token>'.")
        try:
            secret = header[1].decode("ascii")
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("The token holds characters no Baton token has.") from None
        token = token_for_secret(secret)
        if token is None:
            raise exceptions.AuthenticationFailed("The token is unknown, revoked or expired, or its user is inactive.")
        return token.user, token

    def authenticate_header(self, request: Request) -> str:
        # Present, so an unauthenticated request is 401 (with this challenge) rather than 403.
        return f'{self.keyword} realm="api"'
