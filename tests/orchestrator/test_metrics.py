"""/metrics (Prometheus text, behind a token) and the health endpoints for load balancers."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from orchestrator import rollups
from orchestrator.models import InstanceState, RollupCursor, WorkflowInstance
from orchestrator.services.instances import instance_start
from tests.factories import OrderInputFactory

TOKEN = "tests-metrics-token"  # tests/settings.py
AUTH = {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}"}


def scrape(client) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """name -> labels -> value, parsed by prometheus-client's own parser (a format error raises)."""
    response = client.get("/metrics", **AUTH)
    assert response.status_code == 200, response.content[:300]
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


@pytest.mark.django_db
class TestToken:
    def test_without_the_token_setting_the_endpoint_does_not_exist(self, client, settings):
        # given
        settings.BATON_METRICS_TOKEN = ""

        # when
        response = client.get("/metrics", **AUTH)

        # then
        assert response.status_code == 404

    @pytest.mark.parametrize(
        "header",
        ["", "Bearer", "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer \x00"],
    )
    def test_a_missing_or_wrong_token_is_401_and_says_bearer(self, client, header):
        # when
        response = client.get("/metrics", HTTP_AUTHORIZATION=header) if header else client.get("/metrics")

        # then
        assert response.status_code == 401
        assert response["WWW-Authenticate"].startswith("Bearer")
        assert b"baton_" not in response.content

    def test_a_signed_in_admin_without_the_token_is_refused_too(self, client, users):
        # given
        client.force_login(users.admin)

        # then
        assert client.get("/metrics").status_code == 401

    def test_only_get_and_head(self, client):
        assert client.post("/metrics", **AUTH).status_code == 405


@pytest.mark.django_db
def test_an_empty_deployment_scrapes_and_parses(client):
    """No instance yet: the exposition still parses, with the gauges present."""
    # when
    samples = scrape(client)

    # then
    assert value(samples, "baton_human_tasks_open") == 0
    assert "baton_sweep_lag_seconds" in samples
    assert "baton_rollup_backlog_events" in samples
    assert value(samples, "baton_live_connections") == 0


@pytest.mark.django_db(transaction=True)
def test_counters_histograms_and_gauges_follow_the_work(client, run_steps, broker):
    """Work done in-process moves the counters, the step histogram counts each ended attempt and the gauges say
    what is open; the broker's queue depth counts the messages waiting in Redis."""
    # given
    instance_start("order_fulfilment", OrderInputFactory(fail_payment=1))
    instance_start("order_fulfilment", OrderInputFactory(amount="5000"))  # waits for a manager
    run_steps()
    time.sleep(1.0)  # the payment's back-off (0.5 s and jitter): its retry then runs on the real clock, timed
    run_steps()
    rollups.rollup_pass()
    rollups.rollup_pass()

    # when
    samples = scrape(client)

    # then
    assert value(samples, "baton_instances_started_total", workflow="order_fulfilment") == 2
    assert value(samples, "baton_instances_completed_total", workflow="order_fulfilment") == 1
    assert value(samples, "baton_step_retries_total", workflow="order_fulfilment") == 1
    assert value(samples, "baton_instances", workflow="order_fulfilment", version="1", state="waiting") == 1
    assert value(samples, "baton_instances", workflow="order_fulfilment", version="1", state="completed") == 1
    charge = value(samples, "baton_step_duration_seconds_count", workflow="order_fulfilment", step="charge_payment")
    # Both orders charged (the large one before its approval); the failed attempt counts as a retry, not a timing.
    assert charge == 2
    assert value(samples, "baton_instance_duration_seconds_count", workflow="order_fulfilment") == 1
    inf = value(samples, "baton_instance_duration_seconds_bucket", workflow="order_fulfilment", le="+Inf")
    assert inf == 1
    assert value(samples, "baton_human_tasks_open") == 1
    assert value(samples, "baton_rollup_backlog_events") == 0
    assert 0 <= value(samples, "baton_sweep_lag_seconds") < 60
    waiting_messages = broker.client.llen(broker.queue)
    assert waiting_messages > 0  # run_steps ran the steps in-process; their dispatches are still queued
    assert value(samples, "baton_broker_queue_depth", queue="baton") == waiting_messages


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_counters_move_when_a_real_worker_runs_the_work(client, celery_worker, wait_for):
    """Instances run by a real Celery worker (beat sweeping every 0.5 s folds the trail): started and completed
    move by what ran, the step histogram counts the steps, and the sweep lag stays small."""
    # given
    before = scrape(client)
    started = [instance_start("order_fulfilment", OrderInputFactory()) for _ in range(3)]
    wait_for(
        lambda: (
            WorkflowInstance.objects.filter(pk__in=[i.pk for i in started], state=InstanceState.COMPLETED).count() == 3
        ),
        what="three completions",
    )

    # when
    after = wait_for(
        lambda: (
            samples
            if value(samples := scrape(client), "baton_instances_completed_total", workflow="order_fulfilment")
            - value(before, "baton_instances_completed_total", workflow="order_fulfilment")
            == 3
            else None
        ),
        what="the completions in /metrics",
    )

    # then
    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("baton_instances_started_total", workflow="order_fulfilment") == 3
    assert moved("baton_step_duration_seconds_count", workflow="order_fulfilment", step="ship") == 3
    assert moved("baton_instance_duration_seconds_count", workflow="order_fulfilment") == 3
    assert value(after, "baton_sweep_lag_seconds") < 10


@pytest.mark.django_db
class TestHealth:
    def test_liveness_answers_without_touching_anything(self, client, django_assert_num_queries):
        # when
        with django_assert_num_queries(0):
            response = client.get("/health/live")

        # then
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}

    # The check reads on a session of its own (bounded, orchestrator/health.py): the sweep must be committed.
    @pytest.mark.django_db(transaction=True)
    def test_ready_when_database_broker_channel_layer_and_a_recent_sweep_answer(self, client):
        # given
        rollups.rollup_pass()

        # when
        response = client.get("/health/ready")

        # then
        assert response.status_code == 200, response.json()
        checks = response.json()["checks"]
        assert set(checks) == {"database", "broker", "channel_layer", "sweep"}
        assert all(check["ok"] for check in checks.values())

    # The check reads on a session of its own (bounded, orchestrator/health.py): the sweep must be committed.
    @pytest.mark.django_db(transaction=True)
    def test_not_ready_when_the_sweep_never_ran_or_is_late(self, client, settings):
        # given: never
        never = client.get("/health/ready")
        rollups.rollup_pass()
        RollupCursor.objects.update(swept_at=timezone.now() - timedelta(seconds=settings.BATON_READY_SWEEP_AGE + 5))

        # when
        late = client.get("/health/ready")

        # then
        assert never.status_code == 503
        assert never["Retry-After"]
        assert never.json()["checks"]["sweep"]["ok"] is False
        assert never.json()["checks"]["sweep"]["detail"] == "late: last ran never"
        assert late.status_code == 503
        assert late.json()["checks"]["sweep"]["detail"].startswith("late: last ran")
        assert late.json()["checks"]["database"]["ok"]

    def test_not_ready_when_the_broker_is_unreachable_and_the_address_is_not_shown(self, client, settings):
        # given
        rollups.rollup_pass()
        settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"

        # when
        response = client.get("/health/ready")

        # then
        assert response.status_code == 503
        broker = response.json()["checks"]["broker"]
        assert broker["ok"] is False
        assert broker["detail"].startswith("unreachable (")
        assert "127.0.0.1" not in response.content.decode()


def test_every_roll_up_counter_is_exported_once_under_its_own_name():
    # given the roll-up's counters and the collector's table of them
    from orchestrator import metrics, stats

    # then each counter has one Prometheus name, and no two share one
    assert tuple(metrics._COUNTERS) == stats.COUNTERS
    assert len({name for name, _ in metrics._COUNTERS.values()}) == len(stats.COUNTERS)
