"""``baton-admin``: Django's management commands for an installed Baton, which has no manage.py.

``baton-admin migrate``, ``baton-admin check``, ``baton-admin collectstatic``, ``baton-admin createsuperuser`` and
Baton's own commands (``baton_start``, ``baton_verify_audit``) behave as ``python manage.py ...`` in a checkout.
Settings are ``baton_site.settings`` unless ``DJANGO_SETTINGS_MODULE`` names a deployment's own module.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    """Run the management command named in ``sys.argv``; exits with the command's status (Django's own rule), or
    with 2 and one line on stderr when the settings refuse to load (orchestrator/startup.py)."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "baton_site.settings")
    from django.core.management import execute_from_command_line

    from orchestrator.startup import apply_settings_options, load_settings_or_exit

    # As manage.py: a refused setting is one line and exit status 2, not Django's traceback (README, "Production").
    apply_settings_options(sys.argv)
    load_settings_or_exit("baton-admin")
    execute_from_command_line(sys.argv)
