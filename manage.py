#!/usr/bin/env python
"""Django's command-line utility for Baton."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "baton_site.settings")
    from django.core.management import execute_from_command_line

    from orchestrator.startup import apply_settings_options, load_settings_or_exit

    # A refused setting is one line and exit status 2 for every command, not Django's traceback (README,
    # "Production"). --settings first, as Django reads it, so that the module the command names is the one checked.
    apply_settings_options(sys.argv)
    load_settings_or_exit("manage.py")
    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
