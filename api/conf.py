"""DRF's and drf-spectacular's settings, imported by the project settings (kept here, beside the code they
configure, so the settings module only names them)."""

from __future__ import annotations

from typing import Any

REST_FRAMEWORK: dict[str, Any] = {
    # A Bearer token first: an unauthenticated request is then 401 with its challenge, not 403.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "api.authentication.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["api.permissions.IsActiveUser"],
    "DEFAULT_PARSER_CLASSES": ["api.parsers.SafeJSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "api.problems.LenientNegotiation",
    "EXCEPTION_HANDLER": "api.problems.problem_handler",
    "DEFAULT_SCHEMA_CLASS": "api.schema.ProblemAutoSchema",
    # OPTIONS answers 405 like any other method an endpoint does not take: the schema documents the API.
    "DEFAULT_METADATA_CLASS": None,
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    "DATETIME_FORMAT": "iso-8601",
    "COERCE_DECIMAL_TO_STRING": True,
    "STRICT_JSON": True,
}

SPECTACULAR_SETTINGS: dict[str, Any] = {
    "TITLE": "Baton API",
    "DESCRIPTION": (
        "Start and follow workflow instances, operate them, and work on human tasks, with the same roles, "
        "four-eyes rule and audit trail as the pages. Authenticate with `Authorization: Bearer <token>` (create "
        "a token on your API tokens page) or a browser session (with its CSRF token on writes). Errors are "
        "`application/problem+json`."
    ),
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    # Swagger UI from drf-spectacular-sidecar's files, served by this site (no CDN).
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # A request body takes only its fields: a typo in a name is a 400, and the schema says so (api/schema.py).
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "api.schema.closed_request_bodies"],
    "SCHEMA_PATH_PREFIX": "/api/",
    # Four models have a "state" and two a "kind": each choice set gets its own name in the schema.
    "ENUM_NAME_OVERRIDES": {
        "InstanceStateEnum": "orchestrator.models.InstanceState",
        "StepStateEnum": "orchestrator.models.StepState",
        "StepKindEnum": "orchestrator.models.StepKind",
        "TaskStateEnum": "approvals.models.TaskState",
        "TaskKindEnum": "approvals.models.TaskKind",
        "TaskPriorityEnum": "approvals.models.Priority",
    },
    "SWAGGER_UI_SETTINGS": {"persistAuthorization": False, "tryItOutEnabled": False},
}
