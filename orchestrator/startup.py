"""A bad setting stops every entry point with one line on stderr and exit status 2, not a traceback.

baton_site/settings.py refuses a wrong value with ``ImproperlyConfigured`` naming the variable (README,
"Production", "Settings"). Left alone, that message was the last line of a 30-to-60-line traceback from
manage.py, gunicorn, daphne or Celery, and gunicorn printed it once per worker before giving up. Each entry point
calls :func:`load_settings_or_exit` before anything else reads the settings: ``manage.py``, ``baton-admin``
(orchestrator/cli.py), the gunicorn master (baton_site/gunicorn_hooks.py), ``baton_site.wsgi``, ``baton_site.asgi``
and the Celery app (baton_site/celery.py). Here, in the engine, not in baton_site: ``baton-admin`` is the
engine's, and nothing in orchestrator may import the project above it (pyproject.toml, importlinter).

Only ``ImproperlyConfigured`` raised while the settings load is turned into the message: any other error (a bug, a
missing package) keeps its traceback. ``BATON_STARTUP_TRACEBACK=1`` keeps the traceback of a refused setting too,
for whoever is changing settings.py.

Imported before the settings are loaded (by manage.py and the gunicorn master): Django's ``settings`` object is
lazy, and nothing here reads it at import.
"""

from __future__ import annotations

import os
import sys

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

# Exit status of a refused configuration: 2, as a command-line tool's usage error (argparse, Django's
# CommandError for bad arguments), so a supervisor or a script can tell it from a crash (1) and from a signal.
STARTUP_ERROR = 2


def traceback_wanted() -> bool:
    """Whether ``BATON_STARTUP_TRACEBACK`` asks for the traceback of a refused setting: 1, true, yes or on (any
    case, blanks ignored), as settings.py's own yes-words. Read here, not through settings.py's ``env_bool``: the
    settings are what failed. Anything else, unset included, is no: the operator's one-line message is the
    default."""
    return os.environ.get("BATON_STARTUP_TRACEBACK", "").strip().lower() in {"1", "true", "yes", "on"}


def refusal_message(error: ImproperlyConfigured, entry: str) -> str:
    """The one line printed for ``error``, raised while ``entry`` (the process: "manage.py", "gunicorn", "celery",
    ...) loaded the settings: ``Baton cannot start: <settings.py's message> (<entry>; settings: <module>; README,
    "Production", lists every setting)``.

    settings.py's messages already name the variable and say what to give (and show no secret: tests/orchestrator/
    test_startup.py checks the ones that could); line breaks are folded so that a log line holds all of it."""
    text = " ".join(str(error).split()) or type(error).__name__
    if text[-1] not in ".!?":
        text += "."
    module = os.environ.get("DJANGO_SETTINGS_MODULE") or "(DJANGO_SETTINGS_MODULE not set)"
    return f'Baton cannot start: {text} ({entry}; settings: {module}; README, "Production", lists every setting)'


def load_settings_or_exit(entry: str, *, status: int = STARTUP_ERROR) -> None:
    """Load Django's settings now, so that a refused setting stops this process with one line.

    ``entry`` names the process in the message ("manage.py", "gunicorn", "celery", ...); ``status`` is the exit
    status of a refusal (2; :func:`wsgi_exit_status` for the WSGI module). Returns nothing once the settings are
    loaded (at once when they already were). On ``ImproperlyConfigured`` writes :func:`refusal_message` to stderr
    and raises ``SystemExit(status)``, or re-raises the error with its traceback when
    :func:`traceback_wanted`. Any other exception propagates untouched: a fault in the code must stay visible.
    """
    try:
        # Any setting's lookup imports the settings module; INSTALLED_APPS is the one Django itself reads first.
        getattr(settings, "INSTALLED_APPS")  # noqa: B009 (the lookup is the point, not the value)
    except ImproperlyConfigured as error:
        if traceback_wanted():
            raise
        sys.stderr.write(refusal_message(error, entry) + "\n")
        sys.stderr.flush()
        raise SystemExit(status) from None


def wsgi_exit_status() -> int:
    """The exit status for a refusal while ``baton_site.wsgi`` is imported: gunicorn's "worker failed to boot"
    (3) inside gunicorn, else 2.

    A gunicorn worker that exits 2 is only replaced by the master, which boots another one into the same refusal,
    without end; on 3 the master stops ("Reason: Worker failed to boot.") after the worker's line. ``make web``
    never gets that far: its master refuses first (baton_site/gunicorn_hooks.py). This covers gunicorn started
    without Baton's hooks (with several workers gunicorn may still add a traceback of its own: the second worker's
    exit, reaped while the master halts, raises its "failed to boot" again). gunicorn is read only when already
    loaded: the WSGI module does not depend on it."""
    arbiter = sys.modules.get("gunicorn.arbiter")
    boot_error = getattr(getattr(arbiter, "Arbiter", None), "WORKER_BOOT_ERROR", None)
    return boot_error if isinstance(boot_error, int) else STARTUP_ERROR


def apply_settings_options(argv: list[str]) -> None:
    """Apply ``--settings`` and ``--pythonpath`` of a ``manage.py`` or ``baton-admin`` command line ``argv``
    (``sys.argv``), as Django's ``ManagementUtility.execute`` does before it reads the settings, so that
    :func:`load_settings_or_exit` loads the module the command names. Returns nothing; a command line Django's
    parser cannot read is left to Django, which reports it itself."""
    from django.core.management.base import CommandError, CommandParser, handle_default_options

    parser = CommandParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--settings")
    parser.add_argument("--pythonpath")
    parser.add_argument("args", nargs="*")
    try:
        options, _unknown = parser.parse_known_args(argv[2:])
    except CommandError:
        return
    handle_default_options(options)
