"""Machine facts and CPU accounting (from /proc) for the bench report."""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def cpuidle() -> str:
    """How this machine's idle CPUs wait: the cpuidle driver and, under KVM's ``haltpoll`` driver, how long an idle
    CPU polls before it halts (``guest_halt_poll_ns``; 0: it halts at once, and waking it costs a trip through the
    hypervisor). Read-only: the bench reports the machine as it is."""
    base = Path("/sys/devices/system/cpu/cpuidle")
    try:
        driver = (base / "current_driver").read_text().strip()
    except OSError:
        return "unknown"
    poll = Path("/sys/module/haltpoll/parameters/guest_halt_poll_ns")
    if poll.exists():
        return f"{driver}, guest_halt_poll_ns={poll.read_text().strip()}"
    return driver


def steal_ticks() -> tuple[int, int]:
    """(ticks the hypervisor gave this machine's CPUs to others, all ticks) since boot, from /proc/stat: the
    difference of two readings says what share of a run's time the host took away."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return fields[7], sum(fields[:8])


def machine_info(concurrency: int, pool: str = "prefork", worker_args: str = "") -> dict[str, str]:
    """nproc, CPU model, memory, PostgreSQL, Redis, Python, Django, Celery versions and the worker's concurrency."""
    import celery
    import django
    import psycopg
    import redis
    from django.db import connection

    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    try:
        nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        nproc = str(os.cpu_count())
    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        pg_version = cursor.fetchone()[0]
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    try:
        redis_version = str(client.info("server").get("redis_version", "?"))
    finally:
        client.close()
    try:
        # Read-only: which code was measured (other people edit the tree while benches run).
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True).stdout.splitlines()
        revision = f"{head}{f' + {len(dirty)} uncommitted paths' if dirty else ''}"
    except OSError:
        revision = "unknown"
    return {
        "revision": revision,
        "cpuidle": cpuidle(),
        "date": subprocess.run(["date", "-u", "+%Y-%m-%d %H:%M UTC"], capture_output=True, text=True).stdout.strip(),
        "nproc": nproc,
        "cpu": cpu,
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "postgresql": pg_version,
        "redis": redis_version,
        "python": platform.python_version(),
        "django": django.get_version(),
        "celery": celery.__version__,
        "psycopg": psycopg.__version__,
        "celery_concurrency": f"{concurrency} ({pool}, one worker process{'; ' + worker_args if worker_args else ''})",
    }


# The machine's speed drifts by up to 70 % within an hour (bench/README.md, "API starts"): each run reports how long
# this fixed piece of pure-Python work took (CPU time of this process, median of five), so runs are read against the
# speed they ran at, not only against the clock. Its mix (dicts, attributes, str formatting, json) is the kind of
# work a request does (25.5 ms at 2026-11-30 08:50 UTC).
PROBE_ROUNDS = 5


def speed_probe() -> float:
    """Milliseconds of CPU one fixed round of pure-Python work took now (median of ``PROBE_ROUNDS``); lower is
    faster. Comparable between runs on the same Python, not between machines."""
    import json
    import statistics
    import time

    class Row:
        def __init__(self, i: int) -> None:
            self.id, self.state, self.data = i, "queued", {"n": i, "name": f"step-{i}"}

    timings = []
    for _ in range(PROBE_ROUNDS):
        began = time.process_time()
        out = []
        for i in range(6000):
            row = Row(i)
            row.data["label"] = f"{row.state}/{row.id}"
            out.append(json.dumps(row.data, sort_keys=True))
        timings.append((time.process_time() - began) * 1000)
    return round(statistics.median(timings), 1)


def wakeup_probe(rounds: int = 20000, cpus: tuple[int, int] | None = None) -> float:
    """Microseconds one wake-up round trip between two processes takes now (a byte over a pipe and back, median of
    three runs of ``rounds``). A start is mostly such hand-offs (client, web, PostgreSQL, Redis, worker): on this
    virtual machine their cost drifts while the pure-Python probe above stays put. ``cpus``: pin this process to the
    first CPU and the echoing one to the second (``(0, 1)``: always a wake-up of the other CPU, which on a virtual
    machine whose idle CPUs halt, see ``machine_info``'s ``cpuidle``, costs a trip through the hypervisor)."""
    import statistics
    import time

    runs = []
    mine = os.sched_getaffinity(0)
    for _ in range(3):
        to_child, from_parent = os.pipe()
        to_parent, from_child = os.pipe()
        pid = os.fork()
        if pid == 0:  # the echoing side: nothing but reads and writes, then gone without cleanup
            if cpus:
                os.sched_setaffinity(0, {cpus[1]})
            for _ in range(rounds):
                os.read(to_child, 1)
                os.write(from_child, b"x")
            os._exit(0)
        if cpus:
            os.sched_setaffinity(0, {cpus[0]})
        began = time.perf_counter()
        for _ in range(rounds):
            os.write(from_parent, b"x")
            os.read(to_parent, 1)
        runs.append((time.perf_counter() - began) / rounds * 1e6)
        os.waitpid(pid, 0)
        for fd in (to_child, from_parent, to_parent, from_child):
            os.close(fd)
    if cpus:
        os.sched_setaffinity(0, mine)
    return round(statistics.median(runs), 1)


@dataclass
class CpuSnapshot:
    """CPU seconds used so far by each group of processes, and the machine's busy/total ticks."""

    groups: dict[str, float] = field(default_factory=dict)
    postgres: dict[int, float] = field(default_factory=dict)
    busy: int = 0
    total: int = 0


def _stat(pid: str) -> tuple[str, int, float] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    rest = raw[raw.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
    ppid = int(rest[1])
    cpu = (int(rest[11]) + int(rest[12])) / TICKS
    return comm, ppid, cpu


def cpu_snapshot(worker_pid: int | None) -> CpuSnapshot:
    snap = CpuSnapshot()
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        info = _stat(entry)
        if info is None:
            continue
        comm, ppid, cpu = info
        pid = int(entry)
        if pid == me:
            group = "bench"
        elif worker_pid is not None and (pid == worker_pid or ppid == worker_pid):
            group = "worker"
        elif comm.startswith("postgres"):
            group = "postgres"
            snap.postgres[pid] = cpu
        elif comm.startswith("redis-server"):
            group = "redis"
        else:
            group = "other"
        snap.groups[group] = snap.groups.get(group, 0.0) + cpu
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    snap.total = sum(fields[:8])
    snap.busy = snap.total - idle
    return snap


def cpu_delta(before: CpuSnapshot, after: CpuSnapshot, bench_backends: set[int] | None = None) -> dict[str, float]:
    """CPU seconds per group between two snapshots, and the machine's busy share ("machine_busy", 0..1).

    PostgreSQL is split into the bench database's own backends (``bench_backends``, pids from pg_stat_activity)
    and everything else PostgreSQL did meanwhile (other databases on this shared machine, WAL writer, checkpointer).
    A process that exited between the snapshots is missing from ``after``, so "other" can even come out negative.
    """
    out = {g: round(after.groups.get(g, 0.0) - before.groups.get(g, 0.0), 2) for g in sorted(after.groups)}
    if bench_backends is not None:
        mine = sum(cpu - before.postgres.get(pid, 0.0) for pid, cpu in after.postgres.items() if pid in bench_backends)
        out["postgres_other"] = round(out.get("postgres", 0.0) - mine, 2)
        out["postgres"] = round(mine, 2)
    total = after.total - before.total
    out["machine_busy"] = round((after.busy - before.busy) / total, 3) if total else 0.0
    # What everyone else used: the machine's busy time less the bench's own processes. (Summing the other
    # processes would miss those that exited meanwhile, such as other people's test runs.)
    ours = sum(out.get(g, 0.0) for g in ("bench", "worker", "postgres", "redis"))
    out["not_bench"] = round((after.busy - before.busy) / TICKS - ours, 2)
    out.pop("other", None)
    if bench_backends is not None:
        out.pop("postgres_other", None)
    return out
