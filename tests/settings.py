"""Test settings: the real settings, pointed at real PostgreSQL and Redis unless the environment says otherwise."""

import os

os.environ.setdefault("DATABASE_URL", "postgres://root@127.0.0.1:5432/baton")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/14")
os.environ.setdefault("BATON_SECRET_KEY", "baton-tests-only")
os.environ.setdefault("BATON_AUDIT_KEYS", "tests:baton-tests-only-audit-key-not-for-production")
os.environ.setdefault("BATON_DEBUG", "1")
# The tests run in production mode (DATABASE_URL is set) with the demo app, whose workflows and ledger they use,
# and the benchmark flows.
os.environ.setdefault("BATON_DEMO_APP", "1")
os.environ.setdefault("BATON_WORKFLOW_MODULES", "demo.workflows.bench")

from baton_site.settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
