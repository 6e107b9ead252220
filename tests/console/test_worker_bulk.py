"""A bulk retry on a REAL Celery worker: it acts on exactly the dry run's instances while new matching failures
arrive, and its outcome counts what became of them."""

from __future__ import annotations

import importlib

import pytest

from console.models import BulkJob, BulkJobState
from console.selectors import InstanceFilter, bulk_progress
from console.services import bulk_confirm, bulk_dry_run
from orchestrator import registry
from orchestrator.models import AuditEvent, InstanceState, WorkflowInstance
from orchestrator.services.instances import instance_start

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def ops_flows():
    flows = importlib.import_module("tests.orchestrator.ops_flows")
    if not registry.is_registered("ops_redrive", 1):
        registry.register(flows.OPS_REDRIVE)
    yield flows
    # The module's first import registers all of its flows: none outlives this test.
    for flow in (flows.OPS_REDRIVE, flows.OPS_SLOW, flows.OPS_CANCEL_MIDWAY):
        if registry.is_registered(flow.name, flow.version):
            registry.unregister(flow.name, flow.version)


def failed_count(ids: list[int]) -> int:
    return WorkflowInstance.objects.filter(pk__in=ids, state=InstanceState.FAILED).count()


def test_a_bulk_retry_acts_on_exactly_the_dry_run_while_new_failures_arrive(celery_worker, ops_flows, users, wait_for):
    # given: six failed, counted by a dry run; two more fail before the confirmation
    counted = [instance_start("ops_redrive", {"fail_pay": 2}).pk for _ in range(6)]
    wait_for(lambda: failed_count(counted) == 6, timeout=60, what="six failures")
    job = bulk_dry_run(users.operator, "retry", InstanceFilter(workflow="ops_redrive", state="failed"))
    before = [instance_start("ops_redrive", {"fail_pay": 2}).pk for _ in range(2)]
    wait_for(lambda: failed_count(before) == 2, timeout=60, what="two more failures")

    # when: confirmed, and two more start failing while the job runs
    bulk_confirm(job.pk, users.operator, reason="payments are back")
    during = [instance_start("ops_redrive", {"fail_pay": 2}).pk for _ in range(2)]
    wait_for(lambda: BulkJob.objects.get(pk=job.pk).state == BulkJobState.DONE, timeout=60, what="the job")
    wait_for(
        lambda: WorkflowInstance.objects.filter(pk__in=counted, state=InstanceState.COMPLETED).count() == 6,
        timeout=60,
        what="the retried instances to complete",
    )
    wait_for(lambda: failed_count(during) == 2, timeout=60, what="the later failures")

    # then
    assert job.total == 6
    progress = bulk_progress(BulkJob.objects.get(pk=job.pk))
    assert (progress.done, progress.skipped, progress.error, progress.completed) == (6, 0, 0, 6)
    untouched = before + during
    assert failed_count(untouched) == 4
    assert not AuditEvent.objects.filter(instance_id__in=untouched, action="instance.retried").exists()
    started = AuditEvent.objects.get(chain="operations", action="bulk.started", subject_id=job.pk)
    assert sorted(started.payload["instances"]) == sorted(counted)
