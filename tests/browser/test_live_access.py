"""Live pages follow authority in a real browser: a lost group empties the open queue, a sign-out ends the socket.

The change is made in this process (the admin's side); the page is served by the live server's daphne process, so
the recheck travels through Redis between processes, as it does between a web process and the admin's.
"""

from __future__ import annotations

from playwright.sync_api import expect

from tests.browser.live import BrowserTestCase, orm
from tests.browser.test_inbox import start_expense

# Budgets (milliseconds) for a change to reach an open page: the push is immediate; a few seconds on a loaded box.
GONE_MS = 4000
NEW_TASK_MS = 2000
QUIET_MS = 1500


def _leave_approvers(users) -> None:
    users.staff.groups.remove(users.approvers)


class LiveAccessTests(BrowserTestCase):
    def test_removal_from_the_team_empties_the_open_queue_and_its_new_tasks_stay_away(self):
        """staff is removed from approvers while their team queue is open: the row leaves, the next task never comes."""
        # given
        _instance, task = orm(start_expense, self.users.manager)
        with self.chromium() as browser:
            staff = self.signed_in_page(browser, "staff")
            staff2 = self.signed_in_page(browser, "staff2")
            for page in (staff, staff2):
                page.goto("/inbox/?tab=queue")
                expect(self.task_row(page, task.pk)).to_have_count(1)
                self.wait_until_live(page)
            staff.evaluate("window.__sameDocument = true")

            # when
            orm(_leave_approvers, self.users)

            # then: the row leaves staff's page without a reload, and a new team task reaches staff2 only
            expect(self.task_row(staff, task.pk)).to_have_count(0, timeout=GONE_MS)
            assert staff.evaluate("window.__sameDocument === true"), "staff's page was reloaded"
            _instance, later = orm(start_expense, self.users.manager)
            expect(self.task_row(staff2, later.pk)).to_have_count(1, timeout=NEW_TASK_MS)
            staff.wait_for_timeout(QUIET_MS)
            expect(self.task_row(staff, later.pk)).to_have_count(0)

    def test_signing_out_in_another_tab_ends_the_pages_socket(self):
        """staff signs out in a second tab of the same browser: the first tab's socket closes and is refused after."""
        # given
        with self.chromium() as browser:
            page = self.signed_in_page(browser, "staff")
            page.goto("/inbox/?tab=queue")
            self.wait_until_live(page)
            other_tab = page.context.new_page()
            other_tab.goto("/inbox/?tab=queue")

            # when
            other_tab.get_by_role("button", name="Sign out").click()

            # then
            page.wait_for_function("() => !window.batonLive.connected", timeout=GONE_MS)
            page.wait_for_timeout(QUIET_MS)
            assert page.evaluate("window.batonLive.connected") is False

    def test_a_page_whose_session_ended_goes_to_sign_in_instead_of_reconnecting_forever(self):
        """staff is deactivated while their queue is open: the socket closes with 4401 and the page goes to sign in,
        coming back to the queue afterwards, instead of showing "Reconnecting…" for ever."""
        # given
        with self.chromium() as browser:
            page = self.signed_in_page(browser, "staff")
            page.goto("/inbox/?tab=queue")
            self.wait_until_live(page)

            # when
            orm(_deactivate_staff, self.users)

            # then
            page.wait_for_url("**/login/?next=%2Finbox%2F%3Ftab%3Dqueue", timeout=GONE_MS)
            expect(page.get_by_label("Username")).to_be_visible()

    def test_a_page_sent_to_sign_in_a_moment_ago_does_not_go_round_again(self):
        """If sign-in sent the page straight back (the page is signed in, its socket is not: a proxy dropping the
        socket's cookie), a second 4401 within a minute stops the socket instead of reloading the page for ever."""
        # given: the page went to sign in a moment ago
        with self.chromium() as browser:
            page = self.signed_in_page(browser, "staff")
            page.goto("/inbox/?tab=queue")
            self.wait_until_live(page)
            page.evaluate("window.sessionStorage.setItem('batonLive.signIn', String(Date.now()))")
            page.evaluate("window.__sameDocument = true")

            # when
            orm(_deactivate_staff, self.users)

            # then: the socket closes and stays closed, on the same document
            page.wait_for_function("() => !window.batonLive.connected", timeout=GONE_MS)
            page.wait_for_timeout(QUIET_MS)
            assert page.evaluate("window.__sameDocument === true"), "the page was reloaded"
            assert page.evaluate("window.batonLive.socket.readyState") == 3  # CLOSED, no new attempt


def _deactivate_staff(users) -> None:
    users.staff.is_active = False
    users.staff.save(update_fields=["is_active"])


def _end_every_session() -> None:
    from django.contrib.sessions.models import Session

    Session.objects.all().delete()


class SessionEndedWhileAwayTests(BrowserTestCase):
    def test_a_page_that_reconnects_after_its_session_ended_goes_to_sign_in(self):
        """The socket dropped (a laptop asleep, a restart) and the session ended meanwhile (signed out on another
        device): the reconnect is answered with 4401, so the page goes to sign in instead of retrying for ever."""
        # given
        with self.chromium() as browser:
            page = self.signed_in_page(browser, "staff")
            page.goto("/inbox/?tab=queue")
            self.wait_until_live(page)

            # when: the session ends with no signal, and the socket drops before any re-check sees it
            orm(_end_every_session)
            page.evaluate("window.batonLive.socket.close()")

            # then
            page.wait_for_url("**/login/?next=%2Finbox%2F%3Ftab%3Dqueue", timeout=GONE_MS)
