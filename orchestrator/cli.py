"""``baton-admin``: Django's management commands for an installed Baton, which has no manage.py.

``baton-admin migrate``, ``baton-admin check``, ``baton-admin collectstatic``, ``baton-admin createsuperuser`` and
Baton's own commands (``baton_start``, ``baton_verify_audit``) behave as ``python manage.py ...`` in a checkout.
Settings are ``baton_site.settings`` unless ``DJANGO_SETTINGS_MODULE`` names a deployment's own module.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    """Run the management command named in ``sys.argv``; exits with the command's status (Django's own rule)."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "baton_site.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
