"""The OpenAPI schema's shared parts: every operation documents its problem+json errors, so a client (and
schemathesis) knows each status it may get and the body that comes with it."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers

from api.problems import PROBLEM_JSON
from orchestrator.middleware import QUERY_STRING_MAX


class ProblemSerializer(serializers.Serializer):
    """RFC 9457 problem details, with ``code`` (machine-readable) and ``errors`` (per field)."""

    type = serializers.CharField(help_text="Always about:blank: ``code`` and ``status`` say what happened.")
    title = serializers.CharField()
    status = serializers.IntegerField()
    detail = serializers.CharField()
    code = serializers.CharField()
    instance = serializers.CharField(required=False, help_text="The path that was requested.")
    errors = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()),
        required=False,
        help_text="Per field (dotted for nested input: input.amount), its messages.",
    )


# What any operation may answer besides its own: bad input, no or a bad token, a role or object refused, an unknown
# ``?format=``, a query string too long (orchestrator/middleware.py answers it before any view), a state conflict, a
# body too large, not JSON or compressed, an idempotency key reused or the engine's own records set
# (orchestrator/records.py).
COMMON = {
    400: "Invalid input: ``errors`` names each field.",
    401: "Not signed in: send ``Authorization: Bearer <token>`` or a session cookie.",
    403: "Your role may not do this (or a session request without its CSRF token).",
    404: "Not found, or not yours to see.",
    405: "Method not allowed.",
    406: "A ``format`` the endpoint does not answer in: leave it out (JSON; the schema also takes yaml).",
    414: f"The query string is longer than Baton takes ({QUERY_STRING_MAX} bytes): narrow the filters.",
    503: "The database is unreachable for a moment: retry after Retry-After seconds.",
}
WRITES = {
    409: "Not possible in the object's current state, or someone else acted first.",
    413: "The body is too large.",
    415: "Send ``Content-Type: application/json``, and the body uncompressed (no ``Content-Encoding``).",
    422: (
        "The Idempotency-Key was used before with another body, or the body sets a key where the workflow records "
        "what a human step or a wait did (code ``sets_records``, ``errors`` naming each key)."
    ),
}


class ProblemAutoSchema(AutoSchema):
    """drf-spectacular's AutoSchema, adding the problem responses every endpoint can give (each in
    ``application/problem+json``)."""

    def _get_response_bodies(self, direction: Any = "response") -> dict[str, Any]:
        bodies = super()._get_response_bodies(direction)
        statuses = {**COMMON, **(WRITES if self.method not in ("GET", "HEAD") else {})}
        for code, text in statuses.items():
            if str(code) in bodies:
                bodies[str(code)]["content"] = {
                    PROBLEM_JSON: {"schema": self.resolve_serializer(ProblemSerializer, "response").ref}
                }
                continue
            bodies[str(code)] = {
                "content": {PROBLEM_JSON: {"schema": self.resolve_serializer(ProblemSerializer, "response").ref}},
                "description": text,
            }
        return bodies

    def _map_basic_serializer(self, serializer: Any, direction: Any) -> dict[str, Any]:
        """The serializer's object schema, its ``omitted_for_metadata`` fields not required: an answer asked for with
        ``included_data=metadata`` has no such keys (``api.serializers.without_payloads``), and a schema that
        required them would call that answer wrong."""
        schema = super()._map_basic_serializer(serializer, direction)
        omitted = set(getattr(serializer, "omitted_for_metadata", ()))
        if omitted and "required" in schema:
            schema["required"] = [name for name in schema["required"] if name not in omitted]
            if not schema["required"]:
                del schema["required"]
        return schema


class BearerTokenScheme(OpenApiAuthenticationExtension):
    """Documents ``api.authentication.BearerTokenAuthentication`` as HTTP bearer authentication."""

    target_class = "api.authentication.BearerTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {"type": "http", "scheme": "bearer", "description": "A personal API token (baton_…)."}


def closed_request_bodies(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: every request body's object takes only its own fields
    (``additionalProperties: false``), as the views enforce (``api.views._valid``: a field the endpoint does not
    take is a 400 naming it, never dropped). Request components are the ``...Request`` ones
    (``COMPONENT_SPLIT_REQUEST``); the free-form objects inside them (``input``, ``payload``) stay open."""
    for name, component in result.get("components", {}).get("schemas", {}).items():
        if name.endswith("Request") and component.get("type") == "object":
            component["additionalProperties"] = False
    return result


__all__ = ["BearerTokenScheme", "OpenApiResponse", "ProblemAutoSchema", "ProblemSerializer", "closed_request_bodies"]
