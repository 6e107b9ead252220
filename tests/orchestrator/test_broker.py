"""orchestrator.broker: the Redis transport reuses one client per channel (the worker tests cover delivery)."""

from __future__ import annotations

from baton_site.celery import app


def test_the_broker_is_baton_s_transport_and_keeps_one_client_per_channel():
    # given
    with app.connection_for_write() as connection:
        channel = connection.default_channel

        # when: two operations acquire a client, as a publish and an ack do
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            pass

        # then
        assert type(connection.transport).__module__ == "orchestrator.broker"
        assert first is second
        assert first.connection_pool is channel.pool
        assert first.ping()


def test_celery_settings_are_resolved_once_with_the_values_django_settings_give():
    """The settings Celery reads per publish and per task answer from its first lookup, with Baton's values."""
    from django.conf import settings

    # given
    conf = app.conf

    # then: Baton's own choices, and the defaults Celery would have given
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == settings.CELERY_WORKER_PREFETCH_MULTIPLIER
    assert conf.task_default_queue == "baton"
    assert conf.get("CELERY_DB_REUSE_MAX") == settings.CELERY_DB_REUSE_MAX  # what Celery's Django fixup reads
    assert conf.task_publish_retry is True
    assert "CELERY_TASK_PUBLISH_RETRY" in conf.changes
