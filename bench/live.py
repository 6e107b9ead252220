"""Live-update benchmark: how long a committed change takes to show on another person's open inbox page.

    .venv/bin/python bench/live.py --n 100            # fresh database, 100 measured rounds
    .venv/bin/python bench/live.py --n 100 --keep     # reuse the database of an earlier run (no drop)
    .venv/bin/python bench/live.py --n 50 --watchers 20 --json /tmp/live.json   # 20 more open inboxes; raw data

The whole production-mode stack runs on this machine:

- a dedicated PostgreSQL database ``baton_live_bench`` (dropped and created at start unless ``--keep``) and Redis
  db 10 (FLUSHDB at start), migrated and with static files collected as ``make web`` does;
- the web server as in production: ``.venv/bin/daphne baton_site.asgi:application`` (a subprocess on a free
  loopback port, Redis channel layer, DEBUG off, log in /tmp/baton-live-bench-daphne.log). No Celery worker:
  the expense approval's first step is a human task opened inside ``instance_start``, and the decision only
  schedules the payout step (its message waits in Redis db 10, unread; nothing measured depends on it);
- Debian's Chromium (headless), signed in as ``approver-b`` through the login form, on ``/inbox/?tab=queue``.

Each round (sequential, ``--pause`` ms between rounds so nothing piles up):

1. this process starts an ``expense_approval`` instance as ``initiator`` (amount 80, so one team approval);
   t0 = ``time.time()`` right after ``instance_start`` returns (committed, after-commit broadcasts handed off);
   "new task appears" = the moment B's page has the row ``[data-task=<id>]`` in ``#task-list``, minus t0;
2. ``approvals.services.task_decide(id, approver-a, "approve")``; t1 after it returns;
   "decision reaches other page" = the moment the row left B's DOM, minus t1.

The page records its times with ``Date.now()`` (the same clock as ``time.time()``): a MutationObserver on
``#task-list`` (row added / removed), each websocket message on arrival (the WebSocket constructor is wrapped
before live.js runs, so this listener runs first), htmx's request start / response / swap of ``#task-list``, and
the browser's resource timing of that request. A probe in this process joins the approvers' channel group on the
Redis layer and stamps each event it receives (the channel-layer leg alone, without the consumer). Each latency
splits into:

    commit -> redis probe        from the commit in this process until a channel-layer receiver here has it
    commit -> ws message         the above + LiveConsumer.baton_event (its counts query) + daphne + websocket
    ws message -> request        live.js dispatch + htmx's ``delay:100ms`` on #task-list
    request -> response          GET of the list fragment (TTFB = daphne + Django view + template)
    response -> DOM              htmx swap

Then ``--idle-rounds`` more rounds, each after ``--idle-gap`` seconds without any event: an inbox page usually sits
idle between events, and the websocket's behaviour when idle is part of what a person sees. The page's websocket
(re)connections are counted in both phases.

``--watchers K`` adds K more open inbox pages, simulated in this process without a browser (they are what the
server sees of a page: a websocket signed in as another approver and, like htmx, a GET of the list fragment
100 ms after the last "inbox" event, and again after each reconnect). They show how the fan-out to many open pages
moves the one measured page's latency.

After the rounds the two server pieces are timed alone in this process (``inbox_counts(fresh=True)`` as the
consumer runs it per event, and the list fragment through Django's test client) to separate server CPU from
queueing. Machine facts and load average (start and end) are printed: this machine is shared, read the load.

Two experiment switches change what is measured (the report says so when one is on):
``--channels-socket-timeout S`` points the server's channel layer at ``REDIS_URL?socket_timeout=S`` (through
BATON_CHANNELS_REDIS_URL), to compare with redis-py 8's default of 5 s, which equals channels-redis's 5 s blocking
pop; ``--htmx-delay MS`` rewrites the delay of #task-list's hx-trigger in the measured page (and the watchers).

Timeouts (``--timeout``, default 5 s per event) count as misses. ORM work runs in one helper thread, because
Playwright's sync API keeps an asyncio loop running in the main thread and Django refuses ORM calls there.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import os
import platform
import random
import re
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import traceback
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from harness import PG_SERVER, PYTHON, ROOT, VENV_BIN

sys.path.insert(0, str(ROOT))
DAPHNE = str(VENV_BIN / "daphne")
DB_NAME = "baton_live_bench"
REDIS_URL = "redis://127.0.0.1:6379/10"
DAPHNE_LOG = Path("/tmp/baton-live-bench-daphne.log")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "bench"
TARGET_P95_MS = 300.0
HTMX_DELAY_S = 0.1  # hx-trigger="baton:refresh-inbox from:body delay:100ms" on #task-list
T = TypeVar("T")

ENV = {
    "DATABASE_URL": f"{PG_SERVER}/{DB_NAME}",
    "REDIS_URL": REDIS_URL,
    "BATON_SECRET_KEY": "bench",
    "BATON_AUDIT_KEYS": "bench:bench-audit-key-not-for-production",
    "DJANGO_SETTINGS_MODULE": "baton_site.settings",
    "BATON_ALLOWED_HOSTS": "127.0.0.1,localhost",
    "BATON_LOG_LEVEL": "WARNING",
    "BATON_SECURE_COOKIES": "0",
    # The demo app brings the expense_approval workflow this benchmark starts; the bench flows come by name.
    "BATON_DEMO_APP": "1",
    "BATON_WORKFLOW_MODULES": "demo.workflows.bench",
}

# Runs in every page before its own scripts: time stamps for rows, websocket messages and the list's requests.
PAGE_PROBE = r"""
(() => {
  window.__seen = {};      // task id -> {added: ms, removed: ms}
  window.__ws = [];        // {t, type, task} for every websocket message, stamped on arrival
  window.__opens = [];     // time of each websocket open
  window.__hx = [];        // {start, response, swap} for each htmx request of #task-list
  window.__res = [];       // resource timing of /inbox/ requests, absolute epoch ms
  const Native = window.WebSocket;
  // A subclass registers its listeners in the constructor, before live.js adds its own.
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener("open", () => window.__opens.push(Date.now()));
      this.addEventListener("message", (ev) => {
        const t = Date.now();
        let m = {};
        try { m = JSON.parse(ev.data); } catch (e) {}
        window.__ws.push({t: t, type: m.type || "", task: m.task === undefined ? null : m.task});
      });
    }
  };
  try { performance.setResourceTimingBufferSize(100000); } catch (e) {}
  try {
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) {
        if (!e.name.includes("/inbox/")) continue;
        const o = performance.timeOrigin;
        window.__res.push({start: o + e.startTime, requestStart: o + e.requestStart,
                           responseStart: o + e.responseStart, end: o + e.responseEnd, name: e.name});
      }
    }).observe({type: "resource", buffered: false});
  } catch (e) {}
  const isList = (ev) => ev.detail && ev.detail.elt && ev.detail.elt.id === "task-list";
  document.addEventListener("htmx:beforeRequest", (ev) => {
    if (!isList(ev)) return;
    const rec = {start: Date.now(), response: null, swap: null};
    window.__hx.push(rec);
    ev.detail.xhr.__batonBench = rec;
  });
  document.addEventListener("htmx:afterRequest", (ev) => {
    const rec = ev.detail && ev.detail.xhr && ev.detail.xhr.__batonBench;
    if (rec) rec.response = Date.now();
  });
  document.addEventListener("htmx:afterSwap", (ev) => {
    const rec = ev.detail && ev.detail.xhr && ev.detail.xhr.__batonBench;
    if (rec) rec.swap = Date.now();
  });
})();
"""

# Installed once the page is live: rows present in #task-list, checked after every mutation batch (the htmx swap
# replaces the list's innerHTML, so a row can vanish and come back in one batch: only the result counts).
OBSERVER = r"""
() => {
  const list = document.getElementById("task-list");
  const ids = () => new Set(Array.from(list.querySelectorAll("[data-task]"), (el) => el.dataset.task));
  let present = ids();
  new MutationObserver(() => {
    const now = Date.now();
    const current = ids();
    for (const id of current) {
      if (!present.has(id)) {
        const s = (window.__seen[id] = window.__seen[id] || {});
        if (s.added === undefined) s.added = now;
      }
    }
    for (const id of present) {
      if (!current.has(id)) {
        const s = (window.__seen[id] = window.__seen[id] || {});
        if (s.removed === undefined) s.removed = now;
      }
    }
    present = current;
  }).observe(list, {childList: true, subtree: true});
  return present.size;
}
"""


# Experiment only (--htmx-delay): rewrite the delay in #task-list's hx-trigger in this page and let htmx re-read it.
SET_HTMX_DELAY = r"""
(ms) => {
  const el = document.getElementById("task-list");
  let trigger = el.getAttribute("hx-trigger").replace(/ delay:\d+m?s/g, "");
  if (ms > 0) trigger = trigger.replace("baton:refresh-inbox from:body", `baton:refresh-inbox from:body delay:${ms}ms`);
  el.setAttribute("hx-trigger", trigger);
  htmx.process(el);
  return trigger;
}
"""


# --- set-up ------------------------------------------------------------------------------------------------


def setup_env(args: argparse.Namespace) -> None:
    os.environ.update(ENV)
    if args.channels_socket_timeout is not None:
        os.environ["BATON_CHANNELS_REDIS_URL"] = f"{REDIS_URL}?socket_timeout={args.channels_socket_timeout:g}"
    else:
        os.environ.pop("BATON_CHANNELS_REDIS_URL", None)


def reset_stores(keep: bool) -> str:
    import psycopg
    import redis
    from psycopg import sql

    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DB_NAME]).fetchone() is not None
        state = "kept"
        if exists and not keep:
            # FORCE ends sessions left on this database (only ever this bench's own).
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(DB_NAME)))
            exists = False
            state = "recreated"
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DB_NAME)))
            state = "created" if state == "kept" else state
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.flushdb()
    finally:
        client.close()
    return state


def manage(*args: str) -> None:
    subprocess.run([PYTHON, "manage.py", *args], cwd=ROOT, check=True, env=os.environ.copy())


def create_users(watchers: int) -> dict[str, Any]:
    from django.contrib.auth.models import Group, User

    group, _ = Group.objects.get_or_create(name="approvers")
    names = ["initiator", "approver-a", "approver-b"] + [f"watcher-{i}" for i in range(watchers)]
    ids: dict[str, Any] = {}
    for name in names:
        user, _ = User.objects.get_or_create(username=name)
        user.set_password(PASSWORD)
        user.save()
        if name != "initiator":
            user.groups.add(group)
        ids[name] = user.pk
    ids["group"] = group.pk
    return ids


def session_cookies(names: list[str]) -> list[str]:
    from django.contrib.auth.models import User
    from django.test import Client

    cookies = []
    for name in names:
        client = Client(SERVER_NAME="127.0.0.1")
        client.force_login(User.objects.get(username=name))
        cookies.append(client.cookies["sessionid"].value)
    return cookies


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_daphne(port: int) -> subprocess.Popen[bytes]:
    log = DAPHNE_LOG.open("wb")
    proc = subprocess.Popen(
        [DAPHNE, "-b", "127.0.0.1", "-p", str(port), "baton_site.asgi:application"],
        cwd=ROOT,
        env=os.environ.copy(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"daphne exited with {proc.returncode}; see {DAPHNE_LOG}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/login/", timeout=2) as response:
                if response.status == 200:
                    return proc
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"daphne did not answer on port {port}; see {DAPHNE_LOG}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- machine ---------------------------------------------------------------------------------------------


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def nproc() -> str:
    try:
        return subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return str(os.cpu_count())


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def machine_ticks() -> tuple[int, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    total = sum(fields[:8])
    return total - fields[3] - fields[4], total


def proc_cpu(pid: int) -> float:
    try:
        rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


def top_processes(limit: int = 6) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pcpu,etime,args", "--sort=-pcpu"], capture_output=True, text=True)
    return [line.strip()[:150] for line in out.stdout.splitlines()[1 : limit + 1]]


def daphne_errors() -> dict[str, int]:
    """Exceptions in the server's log, by the line that ends each (chained) traceback."""
    counts: dict[str, int] = {}
    lines = DAPHNE_LOG.read_text(errors="replace").splitlines() if DAPHNE_LOG.exists() else []
    for i, line in enumerate(lines):
        if not re.match(r"^[A-Za-z_][\w.]*(Error|Exception)\b", line):
            continue
        following = next((x for x in lines[i + 1 :] if x.strip()), "")
        if following.startswith(("During handling", "The above exception")):
            continue  # an inner link of a chain; the chain's last exception is counted
        counts[line[:120]] = counts.get(line[:120], 0) + 1
    return counts


# --- helpers run in the ORM thread ----------------------------------------------------------------------------

_orm_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench-orm")


def orm(function: Callable[..., T], *args: Any) -> T:
    """ORM work off the main thread (Playwright's loop runs there); the connection is kept between calls."""
    return _orm_pool.submit(function, *args).result(timeout=120)


_users: dict[str, Any] = {}


def load_users() -> None:
    from django.contrib.auth.models import User

    for name in ("initiator", "approver-a", "approver-b"):
        _users[name] = User.objects.get(username=name)


def start_instance(i: int) -> tuple[int, float, float]:
    """Start an expense; returns (task id, t0 after commit, seconds the call took)."""
    from approvals.models import HumanTask
    from orchestrator.services.instances import instance_start

    data = {"employee": "Bench Employee", "amount": "80", "category": "meals", "description": f"Live bench {i}"}
    started = time.perf_counter()
    instance = instance_start("expense_approval", data, initiator=_users["initiator"])
    t0 = time.time()
    took = time.perf_counter() - started
    task_id = HumanTask.objects.filter(instance=instance).values_list("pk", flat=True).get()
    return task_id, t0, took


def decide(task_id: int) -> tuple[float, float]:
    from approvals.services.tasks import task_decide

    started = time.perf_counter()
    task_decide(task_id, _users["approver-a"], "approve")
    t1 = time.time()
    return t1, time.perf_counter() - started


def server_pieces(fragment_url: str, rounds: int = 50) -> dict[str, list[float]]:
    """In-process timing of the consumer's per-event counts and of the list fragment (no network, no daphne)."""
    from django.test import Client

    from approvals.selectors import inbox_counts

    user = _users["approver-b"]
    out: dict[str, list[float]] = {"inbox_counts(fresh=True)": [], "list fragment (test client)": []}
    for _ in range(5):
        inbox_counts(user, fresh=True)
    for _ in range(rounds):
        started = time.perf_counter()
        inbox_counts(user, fresh=True)
        out["inbox_counts(fresh=True)"].append((time.perf_counter() - started) * 1000)
    client = Client(SERVER_NAME="127.0.0.1")
    client.force_login(user)
    headers = {"HX-Request": "true", "HX-Target": "task-list", "HX-Trigger": "task-list"}
    for _ in range(5):
        client.get(fragment_url, headers=headers)
    for _ in range(rounds):
        started = time.perf_counter()
        response = client.get(fragment_url, headers=headers)
        out["list fragment (test client)"].append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.status_code
    return out


# --- asyncio side: the channel-layer probe and the simulated pages ------------------------------------------


class AsyncSide:
    """One event loop in a thread for the probe and the watchers (never the main thread: Playwright is there)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.tasks: set[asyncio.Task[Any]] = set()  # the loop keeps only weak references to its tasks
        threading.Thread(target=self.loop.run_forever, name="bench-async", daemon=True).start()

    def submit(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(self._keep(coro), self.loop)

    async def _keep(self, coro: Any) -> Any:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            return await coro
        finally:
            self.tasks.discard(task)


class LayerProbe:
    """A receiver in this process on the approvers' group: stamps when the Redis layer delivers each event."""

    def __init__(self, side: AsyncSide, group: str) -> None:
        self.group = group
        self.events: list[tuple[float, str, Any]] = []
        self.receive_errors: dict[str, int] = {}
        self.ready = threading.Event()
        self.future = side.submit(self._run())
        if not self.ready.wait(10):
            raise RuntimeError("the channel-layer probe did not start")

    async def _run(self) -> None:
        from channels.layers import get_channel_layer

        layer = get_channel_layer()
        assert layer is not None
        channel = await layer.new_channel()
        await layer.group_add(self.group, channel)
        self.ready.set()
        while True:
            try:
                message = await layer.receive(channel)
            except Exception as exc:  # counted and reported; LiveConsumer has no such guard
                key = f"{type(exc).__module__}.{type(exc).__name__}: {exc}"
                self.receive_errors[key] = self.receive_errors.get(key, 0) + 1
                continue
            event = message.get("event", {})
            self.events.append((time.time(), str(event.get("type", "")), event.get("task")))

    def first(self, kind: str, task_id: int, since: float) -> float | None:
        for t, type_, task in self.events:
            if type_ == kind and task == task_id and t >= since - 1:
                return t
        return None


class Watcher:
    """What the server sees of one more open inbox page: a websocket, and the list fragment fetched like htmx."""

    def __init__(self, port: int, cookie: str, fragment_url: str, delay: float) -> None:
        self.delay = delay
        self.port = port
        self.cookie = cookie
        self.fragment_url = fragment_url
        self.messages: list[tuple[float, str, Any]] = []
        self.opens = 0
        self.gets: list[float] = []  # ms per fragment GET
        self.errors = 0
        self._pending: asyncio.TimerHandle | None = None
        self._gets_running: set[asyncio.Task[None]] = set()
        self.connected = asyncio.Event()

    async def run(self) -> None:
        attempt = 0
        while True:
            try:
                reader, writer = await self._connect()
            except (OSError, asyncio.IncompleteReadError, ValueError):
                self.errors += 1
                await asyncio.sleep(_backoff(attempt))
                attempt += 1
                continue
            attempt = 0
            self.opens += 1
            self.connected.set()
            if self.opens > 1:
                self._schedule(0)  # live.js fires baton:resync after a reconnect; the list re-fetches
            try:
                await self._read_loop(reader, writer)
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()
            await asyncio.sleep(_backoff(0))

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET /ws/live/ HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"Origin: http://127.0.0.1:{self.port}\r\nCookie: sessionid={self.cookie}\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            writer.close()
            raise ValueError(head[:80])
        return reader, writer

    async def _read_loop(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            b0, b1 = await reader.readexactly(2)
            opcode, length = b0 & 0x0F, b1 & 0x7F
            if length == 126:
                length = struct.unpack(">H", await reader.readexactly(2))[0]
            elif length == 127:
                length = struct.unpack(">Q", await reader.readexactly(8))[0]
            payload = await reader.readexactly(length)
            if opcode == 0x8:  # close
                return
            if opcode == 0x9:  # ping: answer with a masked pong
                mask = os.urandom(4)
                body = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
                writer.write(bytes([0x8A, 0x80 | len(payload)]) + mask + body)
                continue
            if opcode != 0x1:
                continue
            now = time.time()
            try:
                msg = json.loads(payload)
            except ValueError:
                continue
            self.messages.append((now, str(msg.get("type", "")), msg.get("task")))
            if "inbox" in (msg.get("refresh") or ()):
                self._schedule(self.delay)

    def _schedule(self, delay: float) -> None:
        # htmx's delay: each new event restarts the timer.
        if self._pending is not None:
            self._pending.cancel()
        loop = asyncio.get_running_loop()
        self._pending = loop.call_later(delay, self._start_get)

    def _start_get(self) -> None:
        task = asyncio.get_running_loop().create_task(self._get())
        self._gets_running.add(task)
        task.add_done_callback(self._gets_running.discard)

    async def _get(self) -> None:
        started = time.perf_counter()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            writer.write(
                (
                    f"GET {self.fragment_url} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                    f"Cookie: sessionid={self.cookie}\r\nHX-Request: true\r\nHX-Target: task-list\r\n"
                    "HX-Trigger: task-list\r\nConnection: close\r\n\r\n"
                ).encode()
            )
            await writer.drain()
            await reader.read()
            writer.close()
            self.gets.append((time.perf_counter() - started) * 1000)
        except OSError:
            self.errors += 1


def _backoff(attempt: int) -> float:
    # live.js: 0.5 s doubling to 15 s, "equal jitter".
    d = min(15.0, 0.5 * 2**attempt)
    return d / 2 + random.random() * d / 2


# --- statistics ---------------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered) - 1e-9))
    return ordered[min(len(ordered), rank) - 1]


def summary(values: list[float]) -> str:
    if not values:
        return "      -        -        -   (n=0)"
    return (
        f"{statistics.median(values):7.1f}  {pct(values, 0.95):7.1f}  {max(values):7.1f}"
        f"  (n={len(values)}, min {min(values):.1f})"
    )


# --- the measurement ----------------------------------------------------------------------------------------


def stages(page_state: dict[str, Any], task_id: int, kind: str, t_commit: float, probe_t: float | None) -> dict:
    """Split one event's latency using the page's records (all epoch ms)."""
    commit_ms = t_commit * 1000
    seen = page_state["seen"].get(str(task_id), {})
    dom = seen.get("added" if kind == "task.opened" else "removed")
    ws = next((m["t"] for m in page_state["ws"] if m["type"] == kind and m["task"] == task_id), None)
    row: dict[str, Any] = {"total": dom - commit_ms if dom is not None else None}
    row["probe"] = probe_t * 1000 - commit_ms if probe_t is not None else None
    row["ws"] = ws - commit_ms if ws is not None else None
    row["ws_lost"] = ws is None and dom is not None
    if dom is None:
        return row
    # The request whose swap produced the change: the last one swapped by then (started after the message).
    start_after = ws if ws is not None else commit_ms
    requests = [r for r in page_state["hx"] if r["start"] >= start_after and r["swap"] and r["swap"] <= dom + 1]
    if not requests:
        return row
    req = requests[-1]
    row["requests_before_dom"] = len([r for r in page_state["hx"] if start_after <= r["start"] <= dom])
    if ws is not None:
        row["ws_to_request"] = req["start"] - ws
    row["request"] = (req["response"] or req["swap"]) - req["start"]
    row["response_to_dom"] = dom - (req["response"] or req["swap"])
    res = min(page_state["res"], key=lambda e: abs(e["start"] - req["start"]), default=None)
    if res is not None and abs(res["start"] - req["start"]) < 50 and res["responseStart"] > 0:
        row["ttfb"] = res["responseStart"] - res["requestStart"]
    return row


def wait_seen(page: Any, task_id: int, mark: str, timeout: float) -> bool:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(
            f"() => (window.__seen['{task_id}'] || {{}}).{mark} !== undefined", timeout=timeout * 1000, polling=20
        )
        return True
    except PlaywrightTimeout:
        return False


def one_round(page: Any, i: int, phase: str, timeout: float) -> dict[str, Any]:
    task_id, t0, start_took = orm(start_instance, i)
    appeared = wait_seen(page, task_id, "added", timeout)
    t1, decide_took = orm(decide, task_id)
    removed = wait_seen(page, task_id, "removed", timeout)
    return {
        "i": i,
        "phase": phase,
        "task": task_id,
        "t0": t0,
        "t1": t1,
        "appeared": appeared,
        "removed": removed,
        "instance_start_ms": start_took * 1000,
        "task_decide_ms": decide_took * 1000,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    facts: dict[str, Any] = {"nproc": nproc(), "cpu": cpu_model(), "load_start": loadavg()}
    facts["top_start"] = top_processes()
    facts["db"] = reset_stores(args.keep)
    facts["channels_redis_url"] = os.environ.get("BATON_CHANNELS_REDIS_URL", REDIS_URL)
    manage("migrate", "--noinput", "-v", "0")
    manage("collectstatic", "--noinput", "--verbosity", "0")

    import django

    django.setup()
    ids = orm(create_users, args.watchers)
    orm(load_users)
    cookies = orm(session_cookies, [f"watcher-{i}" for i in range(args.watchers)])
    side = AsyncSide()
    probe = LayerProbe(side, f"group.{ids['group']}")

    port = free_port()
    server = start_daphne(port)
    base = f"http://127.0.0.1:{port}"
    fragment_url = "/inbox/?tab=queue"  # the hx-get of #task-list on the queue tab (checked below)
    delay = HTMX_DELAY_S if args.htmx_delay is None else args.htmx_delay / 1000
    watchers = [Watcher(port, cookie, fragment_url, delay) for cookie in cookies]
    watcher_runs = [side.submit(w.run()) for w in watchers]
    rounds: list[dict[str, Any]] = []
    opens: dict[str, int] = {}
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            context = browser.new_context(base_url=base, viewport={"width": 1280, "height": 900})
            context.set_default_timeout(15_000)
            context.add_init_script(PAGE_PROBE)
            page = context.new_page()
            page.goto("/login/")
            page.get_by_label("Username").fill("approver-b")
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(lambda url: "/login/" not in url)
            page.goto("/inbox/?tab=queue")
            page.wait_for_function("() => window.batonLive && window.batonLive.connected")
            hx_get = page.get_attribute("#task-list", "hx-get")
            facts["hx_get"] = hx_get
            fragment_url = hx_get or fragment_url
            for w in watchers:
                w.fragment_url = fragment_url
            if args.htmx_delay is not None:
                facts["hx_trigger"] = page.evaluate(SET_HTMX_DELAY, args.htmx_delay)
            page.evaluate(OBSERVER)
            deadline = time.time() + 30
            while watchers and time.time() < deadline and not all(w.connected.is_set() for w in watchers):
                page.wait_for_timeout(100)

            busy0, total0 = machine_ticks()
            daphne_cpu0 = proc_cpu(server.pid)
            wall0 = time.time()
            opens0 = page.evaluate("() => window.__opens.length")
            for i in range(args.warmup + args.n):
                rounds.append(one_round(page, i, "main" if i >= args.warmup else "warmup", args.timeout))
                page.wait_for_timeout(args.pause)
            facts["wall_s"] = time.time() - wall0
            busy1, total1 = machine_ticks()
            facts["machine_busy"] = (busy1 - busy0) / max(1, total1 - total0)
            facts["daphne_cpu_s"] = proc_cpu(server.pid) - daphne_cpu0
            opens["main"] = page.evaluate("() => window.__opens.length") - opens0
            opens0 += opens["main"]
            for k in range(args.idle_rounds):
                page.wait_for_timeout(args.idle_gap * 1000)
                rounds.append(one_round(page, args.warmup + args.n + k, "idle", args.timeout))
            opens["idle"] = page.evaluate("() => window.__opens.length") - opens0
            watcher_stats = {
                "n": len(watchers),
                "opens": sum(w.opens for w in watchers),
                "gets": sum(len(w.gets) for w in watchers),
                "get_ms": [g for w in watchers for g in w.gets],
                "errors": sum(w.errors for w in watchers),
                "crashed": [repr(f.exception()) for f in watcher_runs if f.done() and f.exception() is not None],
            }
            state = page.evaluate("() => ({seen: window.__seen, ws: window.__ws, hx: window.__hx, res: window.__res})")
            browser.close()
    finally:
        stop(server)
    facts["load_end"] = loadavg()
    facts["top_end"] = top_processes()
    facts["page_ws_opens_during"] = opens
    facts["daphne_exceptions"] = daphne_errors()
    facts["probe_receive_errors"] = probe.receive_errors
    if probe.future.done() and probe.future.exception() is not None:
        facts["probe_crashed"] = "".join(traceback.format_exception(probe.future.exception()))

    for r in rounds:
        r["new"] = stages(state, r["task"], "task.opened", r["t0"], probe.first("task.opened", r["task"], r["t0"]))
        r["decision"] = stages(
            state, r["task"], "task.completed", r["t1"], probe.first("task.completed", r["task"], r["t1"])
        )
        if watchers:
            # When the last of the other open pages had the decision's websocket message.
            got = [
                next((t for t, k, task in w.messages if k == "task.completed" and task == r["task"]), None)
                for w in watchers
            ]
            r["watchers_missing"] = sum(1 for t in got if t is None)
            arrived = [t for t in got if t is not None]
            r["watchers_last_ws"] = (max(arrived) - r["t1"]) * 1000 if arrived else None
    if watchers:
        facts["watchers"] = watcher_stats
    facts["server_pieces"] = orm(server_pieces, fragment_url)
    facts["fragment_url"] = fragment_url
    return {"facts": facts, "rounds": rounds, "args": vars(args)}


LABELS = [
    ("total", "TOTAL commit -> DOM"),
    ("probe", "commit -> redis probe"),
    ("ws", "commit -> ws message"),
    ("ws_to_request", "ws message -> request"),
    ("request", "request -> response"),
    ("ttfb", "  of which TTFB"),
    ("response_to_dom", "response -> DOM"),
]


def report_phase(rounds: list[dict[str, Any]], title: str) -> None:
    n = len(rounds)
    for key, name, ok in (
        ("new", "new task appears", "appeared"),
        ("decision", "decision reaches other page", "removed"),
    ):
        misses = sum(1 for r in rounds if not r[ok])
        lost = sum(1 for r in rounds if r[key].get("ws_lost"))
        print(
            f"{title}: {name}  (ms; p50  p95  max)   misses: {misses}/{n}"
            + (f", websocket message never arrived (list repaired by resync): {lost}" if lost else "")
        )
        for stage, label in LABELS:
            values = [r[key][stage] for r in rounds if r[key].get(stage) is not None]
            print(f"  {label:26s} {summary(values)}")
        several = sum(1 for r in rounds if (r[key].get("requests_before_dom") or 0) > 1)
        if several:
            print(f"  rounds where more than one list request ran before the change: {several}")
        if key == "decision" and any("watchers_last_ws" in r for r in rounds):
            values = [r["watchers_last_ws"] for r in rounds if r.get("watchers_last_ws") is not None]
            missing = sum(r.get("watchers_missing", 0) for r in rounds)
            print(f"  {'commit -> last watcher ws':26s} {summary(values)}   (messages missing: {missing})")
        print()


def report(result: dict[str, Any]) -> None:
    facts, rounds, args = result["facts"], result["rounds"], result["args"]
    main_rounds = [r for r in rounds if r["phase"] == "main"]
    idle_rounds = [r for r in rounds if r["phase"] == "idle"]
    print()
    print(
        f"Live updates: N={len(main_rounds)} rounds (+{args['warmup']} warm-up), pause {args['pause']} ms; "
        f"then {len(idle_rounds)} rounds after {args['idle_gap']:g} s idle each; watchers {args['watchers']}"
    )
    print(f"machine: nproc {facts['nproc']}, {facts['cpu']}")
    print(f"load average at start: {facts['load_start']}   at end: {facts['load_end']}")
    print(
        f"machine busy during the N rounds: {facts['machine_busy'] * 100:.0f}% of {facts['nproc']} CPUs over "
        f"{facts['wall_s']:.1f} s; daphne used {facts['daphne_cpu_s']:.2f} CPU s"
    )
    print("busiest processes at start:")
    for line in facts["top_start"]:
        print(f"    {line}")
    print(f"channel layer: {facts['channels_redis_url']}; #task-list hx-get: {facts.get('hx_get')}")
    if "hx_trigger" in facts:
        print(f"EXPERIMENT: #task-list hx-trigger rewritten in the page to: {facts['hx_trigger']}")
    print()
    report_phase(main_rounds, "N rounds")
    if idle_rounds:
        report_phase(idle_rounds, f"after {args['idle_gap']:g} s idle")
    opens = facts["page_ws_opens_during"]
    print(
        f"page websocket (re)opens: {opens.get('main', 0)} during the N rounds, {opens.get('idle', 0)} during the "
        f"idle rounds ({args['idle_rounds']} x {args['idle_gap']:g} s)"
    )
    if facts["daphne_exceptions"]:
        print("exceptions in the daphne log:")
        for line, count in facts["daphne_exceptions"].items():
            print(f"    {count:4d} x {line}")
    if facts["probe_receive_errors"]:
        print("probe's channel_layer.receive() raised (it retries; LiveConsumer would die):")
        for line, count in facts["probe_receive_errors"].items():
            print(f"    {count:4d} x {line}")
    if "watchers" in facts:
        w = facts["watchers"]
        print(
            f"watchers: {w['n']} simulated pages, {w['opens']} websocket opens, {w['gets']} fragment GETs "
            f"(ms: {summary(w['get_ms'])}), {w['errors']} errors"
        )
    print()
    print("bench-side calls (ms; p50  p95  max)")
    print(f"  {'instance_start':26s} {summary([r['instance_start_ms'] for r in main_rounds])}")
    print(f"  {'task_decide':26s} {summary([r['task_decide_ms'] for r in main_rounds])}")
    print(f"server pieces alone, in this process ({facts['fragment_url']}; ms; p50  p95  max)")
    for name, values in facts["server_pieces"].items():
        print(f"  {name:26s} {summary(values)}")
    decision = [r["decision"]["total"] for r in main_rounds if r["decision"].get("total") is not None]
    if decision:
        p95 = pct(decision, 0.95)
        missed = sum(1 for r in main_rounds if not r["removed"])
        verdict = "meets" if p95 <= TARGET_P95_MS and not missed else "misses"
        print(
            f"\ntarget: decision reaches another page p95 <= {TARGET_P95_MS:.0f} ms: "
            f"p95 {p95:.1f} ms over N={len(main_rounds)}, {missed} misses: {verdict} it"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100, help="measured rounds (default 100)")
    parser.add_argument("--warmup", type=int, default=3, help="rounds run first and not counted (default 3)")
    parser.add_argument("--pause", type=int, default=300, help="ms between rounds (default 300)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait per event (default 5)")
    parser.add_argument("--idle-rounds", type=int, default=5, help="rounds after an idle gap each (default 5)")
    parser.add_argument("--idle-gap", type=float, default=12.0, help="seconds idle before each (default 12)")
    parser.add_argument("--watchers", type=int, default=0, help="more open inbox pages, simulated (default 0)")
    parser.add_argument(
        "--channels-socket-timeout", type=float, help="experiment: socket_timeout for the server's channel layer"
    )
    parser.add_argument(
        "--htmx-delay", type=int, help="experiment: the hx-trigger delay (ms) of #task-list in the pages, 0 for none"
    )
    parser.add_argument("--keep", action="store_true", help="reuse the database instead of dropping it")
    parser.add_argument("--json", help="write every round's timings and the machine facts to this file")
    args = parser.parse_args()
    setup_env(args)
    result = run(args)
    report(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))
        print(f"raw data: {args.json}")


if __name__ == "__main__":
    main()
