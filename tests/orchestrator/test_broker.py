"""orchestrator.broker: the Redis transport reuses one client per channel (the worker tests cover delivery)."""

from __future__ import annotations

import pytest

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


def _unacked_message(connection, queue_name: str):
    from kombu import Queue

    channel = connection.default_channel
    queue = Queue(queue_name, channel=channel)
    queue.declare()
    channel.basic_publish(channel.prepare_message("look at step 1"), exchange="", routing_key=queue_name)
    message = queue.get(no_ack=False)
    assert message is not None
    return channel, message


def test_an_ack_on_a_channel_whose_connection_was_lost_is_a_connection_error_celery_handles():
    """CI saw a worker end here: Redis restarted under it, the consumer reconnected, and a task taken before
    finished and acked on the old channel, whose pool kombu had dropped and whose connection was closed. Building a
    pool there raised an AttributeError nobody catches; now it is the connection error Celery logs and survives."""
    # given: a message taken (unacked), then the state the traceback showed: no pool, the connection closed
    connection = app.connection_for_write()
    channel, message = _unacked_message(connection, "baton_probe_lost")
    channel._disconnect_pools()
    channel.connection.client = None

    # when / then: the ack fails as a lost connection does, and what Celery does with an ack
    # (Message.ack_log_error) logs it and carries on
    with pytest.raises(connection.connection_errors):
        message.ack()
    logger = _NullLogger()
    message.ack_log_error(logger=logger, errors=connection.connection_errors)
    assert "Couldn't ack" in logger.said[0]

    # the connection back, as a reconnect brings it: the unacked message is restored and the channel closes
    channel.connection.client = connection
    connection.release()


def test_a_warm_shutdown_still_acks_and_restores_through_the_pool_it_holds():
    """A channel closed in order (its connection collected) keeps its pool: an ack still reaches Redis."""
    import redis as redis_client
    from django.conf import settings

    # given
    connection = app.connection_for_write()
    _channel, message = _unacked_message(connection, "baton_probe_warm")
    connection.collect()

    # when
    message.ack()

    # then: nothing of it is left unacked in Redis
    raw = redis_client.Redis.from_url(settings.REDIS_URL)
    assert not raw.hexists("unacked", message.delivery_tag)
    connection.release()


class _NullLogger:
    def critical(self, *args, **kwargs):
        self.said = args
