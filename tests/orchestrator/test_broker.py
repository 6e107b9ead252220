"""orchestrator.broker: the Redis transport reuses one client per channel (the worker tests cover delivery)."""

from __future__ import annotations

from orchestrator.celery import app


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
