"""A Channels live server (HTTP and websockets, served by daphne) and real Chromium, for browser tests.

How it fits together (see tests/browser/README.md):

- :class:`BrowserTestCase` is ``channels.testing.ChannelsLiveServerTestCase`` (a ``TransactionTestCase``): one
  daphne process per test class serves ``baton_site.asgi.application`` on the test database; every test's
  rows are committed (the server process must see them) and flushed after the test.
- The server process is started with ``spawn`` (:class:`SpawnDaphneProcess`): a fresh interpreter that
  inherits no database connection, thread or event loop from pytest. It reads the same settings, so it uses
  the Redis channel layer and the test database its pytest process uses (handed over: under pytest-xdist the
  settings alone lack the process's suffix); it then sets ``DEBUG = False`` as the
  test runner does here, so a 404 is the real 404 page.
- Playwright's sync API runs an asyncio loop in the calling thread while it is started, and Django refuses
  ORM calls from a thread with a running loop. So Chromium runs only inside ``with self.chromium():``; the
  ORM is used before and after that block, and inside it only through :func:`orm` (a helper thread).
"""

from __future__ import annotations

import multiprocessing
import os
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest
from channels.testing import ChannelsLiveServerTestCase
from daphne.testing import DaphneProcess
from django.contrib.auth import get_user_model
from django.db import connections
from django.test import Client
from playwright.sync_api import Browser, Page, expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
PASSWORD = "demo"
# Actions and expectations wait this long unless a test asks for less (the live-update tests ask for 1 s).
TIMEOUT_MS = 10_000

SPAWN = multiprocessing.get_context("spawn")
T = TypeVar("T")


def _prepare_server(database_name: str, setup: Callable[[], None] | None) -> None:
    """Runs in the server process before it serves: the test database, and DEBUG off like the test runner.

    ``database_name`` is the test database this pytest process uses: under pytest-xdist it carries the process's
    suffix ("test_baton_gw0"), which the settings the server reads again do not."""
    from django.conf import settings

    settings.DATABASES["default"].setdefault("TEST", {})["NAME"] = database_name
    if setup is not None:
        setup()
    settings.DEBUG = False


class SpawnDaphneProcess(DaphneProcess):
    """``DaphneProcess`` started with ``spawn`` instead of ``fork``: a forked server would inherit the
    test process's database connections and event loop (channels#2176)."""

    def __init__(
        self,
        host: str,
        get_application: Callable[[], Any],
        kwargs: dict[str, Any] | None = None,
        setup: Callable[[], None] | None = None,
        teardown: Callable[[], None] | None = None,
        port: int | None = None,
    ) -> None:
        database_name = connections["default"].settings_dict["NAME"]
        super().__init__(host, get_application, kwargs, partial(_prepare_server, database_name, setup), teardown, port)
        # The shared objects must come from the spawn context too, or the child cannot reopen them.
        self.port = SPAWN.Value("i", port if port is not None else 0)
        self.ready = SPAWN.Event()
        self.errors = SPAWN.Queue()

    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        return SPAWN.Process._Popen(process_obj)


_orm_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="browser-orm")


def orm(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ORM code while Chromium is open: in a helper thread (no event loop there), connection closed after."""

    def call() -> T:
        try:
            return function(*args, **kwargs)
        finally:
            connections.close_all()

    return _orm_thread.submit(call).result(timeout=60)


def _session_key(username: str) -> str:
    client = Client()
    client.force_login(get_user_model().objects.get(username=username))
    return client.cookies["sessionid"].value


def screenshots_dir(test_dir: Path) -> Path:
    """The folder screenshots go to, made if missing: $BATON_SCREENSHOTS when set (``make screenshots`` sets
    docs/screenshots), else ``test_dir`` (the test's temporary directory)."""
    target = Path(os.environ.get("BATON_SCREENSHOTS") or test_dir)
    target.mkdir(parents=True, exist_ok=True)
    return target


def screenshot(page: Page, test_dir: Path, name: str) -> None:
    """Full-page PNG ``name`` of ``page`` in :func:`screenshots_dir`, for a person to look at. Raises what
    Playwright raises."""
    page.screenshot(path=str(screenshots_dir(test_dir) / name), full_page=True)


class BrowserTestCase(ChannelsLiveServerTestCase):
    """Base class of the browser tests: the live server, Chromium, and signing in through the login form.

    pytest fixtures reach the tests through ``_pytest_fixtures``: ``self.users`` (tests/conftest.py's demo
    cast, password "demo"), ``self.tmp_path``, and ``self.fixture(name)`` for any other fixture.
    """

    host = "localhost"
    ProtocolServerProcess = SpawnDaphneProcess

    @pytest.fixture(autouse=True)
    def _pytest_fixtures(self, request: pytest.FixtureRequest, users: Any, tmp_path: Any) -> None:
        self._request = request
        self.users = users
        self.tmp_path = tmp_path

    def fixture(self, name: str) -> Any:
        return self._request.getfixturevalue(name)

    @contextmanager
    def chromium(self, bfcache: bool = False) -> Iterator[Browser]:
        """Headless Debian Chromium; no ORM call in this thread until the block ends (use :func:`orm`).

        ``bfcache=True`` keeps Chromium's back/forward cache, which Playwright turns off by default
        (``--disable-back-forward-cache``), for a test of a page brought back by Back."""
        ignored = ["--disable-back-forward-cache"] if bfcache else []
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, ignore_default_args=ignored
            )
            try:
                yield browser
            finally:
                browser.close()

    def new_page(self, browser: Browser, viewport: dict[str, int] = DESKTOP) -> Page:
        """A page in its own context (its own cookies: one signed-in person per page)."""
        context = browser.new_context(base_url=self.live_server_url, viewport=viewport)  # type: ignore[arg-type]
        context.set_default_timeout(TIMEOUT_MS)
        return context.new_page()

    def sign_in(self, page: Page, username: str, password: str = PASSWORD) -> None:
        """Through the login form, as a person would; waits until the login page is left."""
        page.goto("/login/")
        page.get_by_label("Username").fill(username)
        page.get_by_label("Password").fill(password)
        page.get_by_role("button", name="Sign in").click()
        expect(page).not_to_have_url(re.compile(r"/login/"))

    def signed_in_page(self, browser: Browser, username: str, viewport: dict[str, int] = DESKTOP) -> Page:
        """A page whose context already carries ``username``'s session cookie (faster than the login form)."""
        page = self.new_page(browser, viewport)
        page.context.add_cookies(
            [{"name": "sessionid", "value": orm(_session_key, username), "url": self.live_server_url}]
        )
        return page

    def failed_demo_expense(self) -> Any:
        """The demo's failed expense, built through the engine in-process (no worker): staff's 40.00 expense,
        approved by staff2 ("Budgeted in Q3"), whose payout payroll refused on all three attempts. Call it before
        :meth:`chromium` (it uses the ORM). Returns the instance, failed."""
        # Imported here: the spawned server process loads this module before Django's apps are ready.
        from approvals.services.tasks import task_decide
        from demo.data import ensure_roles
        from orchestrator.models import InstanceState
        from orchestrator.services.instances import instance_start
        from tests.factories import ExpenseInputFactory

        run_steps = self.fixture("run_steps")
        ensure_roles()
        failed = instance_start(
            "expense_approval",
            {**ExpenseInputFactory(amount="40.00"), "fail_payout": 3},
            initiator=self.users.staff,
        )
        task_decide(failed.tasks.get().pk, self.users.staff2, "approve", comment="Budgeted in Q3")
        run_steps(failed, advance=True)
        failed.refresh_from_db()
        assert failed.state == InstanceState.FAILED, failed.state
        return failed

    @staticmethod
    def wait_until_live(page: Page) -> None:
        """Wait for the page's websocket to be open (live.js exposes ``window.batonLive`` for tests)."""
        page.wait_for_function("() => window.batonLive && window.batonLive.connected", timeout=TIMEOUT_MS)

    @staticmethod
    def task_row(page: Page, task_id: int) -> Any:
        return page.locator(f'[data-task="{task_id}"]')
