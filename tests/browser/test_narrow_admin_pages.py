"""The operators' and admins' pages at 375 px: a long unbroken word in a title, a business key, an error, a reason, a
schedule's name or its start input (a reference, a file name, a token: no space to break at) wraps, and nothing
makes the page wider than the screen."""

from __future__ import annotations

from datetime import timedelta
from typing import cast

from django.utils import timezone

from automation.models import Schedule, ScheduleFire
from console.models import BulkJob
from console.selectors import InstanceFilter
from console.services import bulk_dry_run
from demo.data import grant_group_permissions
from orchestrator.audit import Actor
from orchestrator.models import InstanceState, StepRun, WorkflowInstance
from orchestrator.services.instances import instance_pause, instance_start
from tests.browser.live import BrowserTestCase
from tests.factories import ExpenseInputFactory

NARROW = {"width": 375, "height": 812}
WORD = "Z" * 100  # a description, a key, a name: up to 100 characters, with no space
LONG = "Q" * 600  # an error or a reason with no space


# Boxes that may hold something wider than the screen: they scroll or clip it themselves.
OWN_SCROLL = ".table-responsive, .diagram-pan, .visually-hidden, .overflow-auto"


def too_wide(page) -> list[str]:
    """What makes the page wider than the screen: each element past its right edge (tag, class, text)."""
    return page.evaluate(
        """([width, own]) => [...document.body.querySelectorAll('*')]
          .filter(e => e.getBoundingClientRect().right > width + 1 && e.getClientRects().length && !e.closest(own))
          .slice(0, 4).map(e => e.tagName + '.' + e.className + ' ' + (e.textContent || '').trim().slice(0, 30))""",
        [NARROW["width"], OWN_SCROLL],
    )


class NarrowAdminPageTests(BrowserTestCase):
    def test_console_audit_and_schedule_pages_wrap_long_unbroken_words_at_375_px(self):
        """Given an instance titled and keyed by a long word, failed with a long unbroken error and paused with a long
        unbroken reason, a bulk dry run over it, and a schedule named by a long word whose start input and last error
        hold long words, when an operator and an admin open each page at 375 px, then none is wider than the screen
        and no table scrolls sideways."""
        # given
        grant_group_permissions()
        operator, admin = self.users.operator, self.users.admin
        instance = instance_start(
            "expense_approval",
            cast(dict, ExpenseInputFactory(description=WORD, employee=WORD)),
            business_key=WORD,
            initiator=self.users.staff,
        )
        instance_pause(instance.pk, actor=Actor.of(operator), reason=f"{LONG[:900]}")
        job = bulk_dry_run(operator, "cancel", InstanceFilter(workflow="expense_approval"))
        assert isinstance(job, BulkJob)
        WorkflowInstance.objects.filter(pk=instance.pk).update(state=InstanceState.FAILED, error=LONG)
        StepRun.objects.filter(instance=instance).update(error=LONG, error_type="ConnectionError")
        now = timezone.now()
        schedule = Schedule.objects.create(
            name=WORD,
            workflow_name="expense_approval",
            input=ExpenseInputFactory(description=WORD, employee=WORD),
            cron="0 9 * * 1-5",
            timezone="Europe/Paris",
            anchor=now,
            next_fire_at=now + timedelta(hours=1),
            owner=admin,
        )
        ScheduleFire.objects.create(schedule=schedule, fire_time=now, fired_at=now, outcome="failed", error=LONG)
        pages = {
            "operator": [
                "/instances/",
                f"/instances/{instance.pk}/",
                "/incidents/",
                f"/instances/bulk/{job.pk}/",
            ],
            "admin": [
                "/audit/",
                f"/audit/?instance={instance.pk}",
                "/automation/",
                f"/automation/schedules/{schedule.pk}/",
                f"/automation/schedules/{schedule.pk}/edit/",
            ],
        }

        with self.chromium() as browser:
            for who, paths in pages.items():
                page = self.signed_in_page(browser, who, NARROW)
                for path in paths:
                    # when
                    response = page.goto(path)
                    assert response is not None
                    assert response.status == 200, path

                    # then
                    width = page.evaluate("document.documentElement.scrollWidth")
                    assert width <= NARROW["width"], f"{path}: {width}px wide: {too_wide(page)}"
