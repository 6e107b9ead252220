"""The project's configuration: settings, root URLs, the ASGI application and the Celery app (``celery -A baton_site``).

The Celery app is imported here, as Django's Celery guide does, so that ``shared_task`` binds to it in every process
that loads the settings.
"""

from baton_site.celery import app as celery_app

__all__ = ["celery_app"]
