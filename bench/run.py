"""Baton throughput benchmark (``make bench``; ``make bench BENCH_ARGS="--n 500"``). See bench/README.md.

A fresh PostgreSQL database ``baton_bench`` and Redis db 13, one real prefork Celery worker (concurrency 2),
and the bench process calling the same services the UI calls:

  A  start N ``bench_approval`` instances (start -> automated ``prepare`` -> human approval) until all wait;
  B  approve every task with ``task_decide`` until all instances are completed;
  C  start M ``bench_chain`` instances (ten automated steps) until all are completed;
  Q  with the worker stopped, count SQL statements per service call in-process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
import sysinfo

TARGETS = {"A": 250.0, "B": 330.0, "E2E": 150.0}
POLL_INTERVAL = 0.05
# This machine is shared: before each phase, wait a while for a quiet moment (set from the command line).
IDLE = {"threshold": 0.25, "wait": 60.0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="bench_approval instances (phases A and B)")
    parser.add_argument("--chain-n", type=int, default=500, help="bench_chain instances (phase C)")
    parser.add_argument("--approvers", type=int, default=4, help="users in the approvers group")
    parser.add_argument("--concurrency", type=int, default=2, help="the worker's concurrency")
    parser.add_argument("--pool", default="prefork", help="the worker's pool (investigation: threads, solo)")
    parser.add_argument(
        "--worker-args", default="", help='more celery worker options (investigation: "--prefetch-multiplier 1")'
    )
    parser.add_argument(
        "--start-threads", type=int, default=1, help="bench threads calling instance_start (phase C; A with 0 procs)"
    )
    parser.add_argument(
        "--start-procs",
        type=int,
        default=2,
        help="bench processes calling instance_start in phase A (as web or API processes would; 0: threads)",
    )
    parser.add_argument(
        "--decide-procs",
        type=int,
        default=2,
        help="bench processes calling task_decide (as web processes would; one process is bounded by its GIL)",
    )
    parser.add_argument("--keep", action="store_true", help="keep an existing baton_bench database")
    parser.add_argument("--skip-queries", action="store_true", help="skip the SQL-per-instance count")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up on a phase after this many seconds")
    parser.add_argument(
        "--idle-threshold",
        type=float,
        default=0.25,
        help="before each phase wait (up to --idle-wait s) until the shared machine is at most this busy",
    )
    parser.add_argument("--idle-wait", type=float, default=60.0, help="longest wait for a quiet machine, seconds")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--sql-log", type=Path, help="write every statement the query count saw to this file")
    parser.add_argument(
        "--py-spy",
        type=Path,
        metavar="DIR",
        help="record the worker (and its pool) with py-spy during phase A into DIR (py-spy must be installed)",
    )
    return parser.parse_args(argv)


# --- waiting for PostgreSQL to say a phase is done ------------------------------------------------------


@dataclass
class Poll:
    """Counts instances of ``workflow`` in ``state`` every 50 ms on its own connection until ``target`` is reached."""

    workflow: str
    state: str
    target: int
    timeout: float
    done_at: float | None = None
    polls: int = 0
    backends: set[tuple[int, float]] = field(default_factory=set)
    histogram: dict[str, int] = field(default_factory=dict)
    error: BaseException | None = None
    cpu: float = 0.0
    # Only instances with pk >= min_pk count: with --keep, earlier runs' instances stay in the table.
    min_pk: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"poll-{self.workflow}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from django.db import connection

        from orchestrator.models import WorkflowInstance

        began = time.perf_counter()
        cpu0 = time.thread_time()
        try:
            mine = WorkflowInstance.objects.filter(workflow_name=self.workflow, pk__gte=self.min_pk)
            query = mine.filter(state=self.state)
            while not self._stop.is_set():
                self.polls += 1
                # Which PostgreSQL sessions exist: a worker that reconnected per task would show a crowd here.
                # (Also the pids whose CPU counts as the bench's PostgreSQL time.)
                with connection.cursor() as cursor:
                    cursor.execute(
                        "SELECT pid, extract(epoch FROM backend_start)::float8 FROM pg_stat_activity"
                        " WHERE datname = current_database()"
                    )
                    self.backends.update((pid, start) for pid, start in cursor.fetchall())
                if query.count() >= self.target:
                    self.done_at = time.perf_counter()
                    break
                if time.perf_counter() - began > self.timeout:
                    break
                time.sleep(POLL_INTERVAL)
            rows = mine.values_list("state", flat=True)
            self.histogram = {}
            for state in rows:
                self.histogram[state] = self.histogram.get(state, 0) + 1
        except BaseException as exc:
            self.error = exc
        finally:
            connection.close()
            self.cpu = time.thread_time() - cpu0

    def join(self) -> float:
        assert self._thread is not None
        self._thread.join()
        if self.error is not None:
            raise self.error
        if self.done_at is None:
            raise RuntimeError(
                f"{self.workflow}: {self.target} instances not {self.state} within {self.timeout:.0f} s: "
                f"{self.histogram}"
            )
        return self.done_at


def last_transition(workflow: str, state: str, min_pk: int) -> float:
    """The wall-clock time (epoch seconds) of the latest write on an instance of ``workflow`` in ``state``."""
    from django.db.models import Max

    from orchestrator.models import WorkflowInstance

    mine = WorkflowInstance.objects.filter(workflow_name=workflow, state=state, pk__gte=min_pk)
    return mine.aggregate(m=Max("updated_at"))["m"].timestamp()


def next_instance_pk() -> int:
    from django.db.models import Max

    from orchestrator.models import WorkflowInstance

    return (WorkflowInstance.objects.aggregate(m=Max("pk"))["m"] or 0) + 1


# --- the phases ---------------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    count: int
    seconds: float
    db_seconds: float
    submit_seconds: float
    cpu: dict[str, float]
    backends_seen: int
    backends_new: int
    polls: int
    busy_before: float
    min_pk: int

    @property
    def rate(self) -> float:
        return self.count / self.seconds

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "count": self.count,
            "seconds": round(self.seconds, 3),
            "per_second": round(self.rate, 1),
            "db_seconds": round(self.db_seconds, 3),
            "submit_seconds": round(self.submit_seconds, 3),
            "cpu_seconds": self.cpu,
            "pg_backends_seen": self.backends_seen,
            "pg_backends_new": self.backends_new,
            "polls": self.polls,
            "machine_busy_before": round(self.busy_before, 3),
        }


class Workers:
    """Run ``fn(chunk, index)`` over ``threads`` slices of ``work``, each thread on its own DB connection.

    The threads keep their connections until :meth:`release`, so the phase's CPU snapshot still sees the
    PostgreSQL backends that served them; then each closes its own connection.
    """

    def __init__(self, work: list[Any], threads: int, fn: Any) -> None:
        self.errors: list[BaseException] = []
        self._release = threading.Event()
        self._done = threading.Barrier(threads + 1) if threads > 1 else None
        self.inline = (fn, work) if threads <= 1 else None
        self.pool = (
            []
            if self.inline
            else [
                threading.Thread(target=self._target, args=(fn, work[i::threads], i), daemon=True)
                for i in range(threads)
            ]
        )

    def _target(self, fn: Any, chunk: list[Any], index: int) -> None:
        from django.db import connections

        try:
            fn(chunk, index)
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            assert self._done is not None
            self._done.wait()
            self._release.wait()
            connections.close_all()

    def run(self) -> None:
        """Do the work; return when every thread has finished its share."""
        if self.inline:
            fn, work = self.inline
            fn(work, 0)
            return
        for t in self.pool:
            t.start()
        assert self._done is not None
        self._done.wait()
        if self.errors:
            self.release()
            raise self.errors[0]

    def release(self) -> None:
        self._release.set()
        for t in self.pool:
            t.join()


def _bench_process(job: str, items: list[Any], user_pks: list[int], index: int, ready: Any, go: Any, out: Any) -> None:
    """One bench process (spawned): set Django up, say ready, do its share on the signal, report its CPU.

    ``job`` is "decide" (``items`` are task ids, decided by ``user_pks`` in turn) or "start" (``len(items)``
    ``bench_approval`` instances started by ``user_pks[0]``).
    """
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.db import connections

    from approvals.services.tasks import task_decide
    from orchestrator.services.instances import instance_start

    people = list(get_user_model().objects.filter(pk__in=user_pks).order_by("pk"))
    ready.wait()
    go.wait()
    began = time.process_time()
    error = ""
    try:
        for i, item in enumerate(items):
            if job == "decide":
                task_decide(item, people[(i + index) % len(people)], "approve")
            else:
                instance_start("bench_approval", {}, initiator=people[0])
    except Exception as exc:  # reported to the parent, which fails the phase
        error = repr(exc)
    out.put((index, time.process_time() - began, error))
    ready.wait()  # keep the DB session open until the parent has read the backends' CPU
    connections.close_all()


class ProcWorkers:
    """Like :class:`Workers`, with spawned processes: each has its own GIL, as web processes do.

    The processes import Django before the clock starts; their CPU during the work is added to the phase's
    ``bench`` figure (the parent only waits).
    """

    def __init__(self, job: str, work: list[Any], procs: int, user_pks: list[int]) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.ready = ctx.Barrier(procs + 1)
        self.go = ctx.Barrier(procs + 1)
        self.out = ctx.Queue()
        self.procs = [
            ctx.Process(target=_bench_process, args=(job, work[i::procs], user_pks, i, self.ready, self.go, self.out))
            for i in range(procs)
        ]
        for proc in self.procs:
            proc.start()
        self.ready.wait(timeout=120)
        self.cpu = 0.0

    def run(self) -> None:
        self.go.wait(timeout=60)
        errors = []
        for _ in self.procs:
            _index, cpu, error = self.out.get(timeout=3600)
            self.cpu += cpu
            if error:
                errors.append(error)
        if errors:
            self.release()
            raise RuntimeError(f"a bench process failed: {errors[0]}")

    def release(self) -> None:
        if self.procs:
            self.ready.wait(timeout=60)
            for proc in self.procs:
                proc.join(timeout=60)
            self.procs = []


def run_phase(
    name: str,
    workflow: str,
    state: str,
    count: int,
    work: list[Any],
    threads: int,
    fn: Any,
    worker: harness.Worker,
    timeout: float,
    min_pk: int,
    *,
    procs: ProcWorkers | None = None,
) -> Phase:
    from django.utils import timezone

    busy_before = harness.wait_idle(IDLE["threshold"], IDLE["wait"])
    poll = Poll(workflow, state, count, timeout, min_pk=min_pk)
    cpu_before = sysinfo.cpu_snapshot(worker.pid)
    began_wall = timezone.now().timestamp()
    began = time.perf_counter()
    poll.start()
    workers: Workers | ProcWorkers = procs or Workers(work, threads, fn)
    try:
        workers.run()
        submitted = time.perf_counter()
        done = poll.join()
        cpu = sysinfo.cpu_delta(cpu_before, sysinfo.cpu_snapshot(worker.pid), {pid for pid, _ in poll.backends})
    finally:
        workers.release()
    # The poller runs in the bench process: its CPU is measurement, not work. Spawned deciders report theirs.
    cpu["bench"] = round(cpu.get("bench", 0.0) - poll.cpu + (procs.cpu if procs else 0.0), 2)
    if procs and "not_bench" in cpu:
        cpu["not_bench"] = round(cpu["not_bench"] - procs.cpu, 2)
    cpu["poller"] = round(poll.cpu, 2)
    db_seconds = last_transition(workflow, state, min_pk) - began_wall
    new_backends = sum(1 for _pid, start in poll.backends if start > began_wall)
    return Phase(
        name=name,
        count=count,
        seconds=done - began,
        db_seconds=db_seconds,
        submit_seconds=submitted - began,
        cpu=cpu,
        backends_seen=len(poll.backends),
        backends_new=new_backends,
        polls=poll.polls,
        busy_before=busy_before,
        min_pk=min_pk,
    )


def phase_a(n: int, threads: int, procs: int, initiator_pk: int, worker: harness.Worker, timeout: float) -> Phase:
    from django.contrib.auth import get_user_model

    from orchestrator.services.instances import instance_start

    def start(chunk: list[int], _index: int) -> None:
        initiator = get_user_model().objects.get(pk=initiator_pk)
        for _ in chunk:
            instance_start("bench_approval", {}, initiator=initiator)

    first = next_instance_pk()
    work = list(range(n))
    starters = ProcWorkers("start", work, procs, [initiator_pk]) if procs else None
    return run_phase("A", "bench_approval", "waiting", n, work, threads, start, worker, timeout, first, procs=starters)


def phase_b(n: int, procs: int, approver_pks: list[int], worker: harness.Worker, timeout: float, min_pk: int) -> Phase:
    from approvals.models import HumanTask, TaskState

    tasks = list(
        HumanTask.objects.filter(
            instance__workflow_name="bench_approval", instance_id__gte=min_pk, state=TaskState.OPEN
        )
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    if len(tasks) != n:
        raise RuntimeError(f"expected {n} open approval tasks, found {len(tasks)}")
    deciders = ProcWorkers("decide", tasks, procs, approver_pks)
    return run_phase("B", "bench_approval", "completed", n, tasks, procs, None, worker, timeout, min_pk, procs=deciders)


def phase_c(m: int, threads: int, initiator_pk: int, worker: harness.Worker, timeout: float) -> Phase:
    from django.contrib.auth import get_user_model

    from orchestrator.services.instances import instance_start

    def start(chunk: list[int], _index: int) -> None:
        initiator = get_user_model().objects.get(pk=initiator_pk)
        for _ in chunk:
            instance_start("bench_chain", {}, initiator=initiator)

    first = next_instance_pk()
    return run_phase("C", "bench_chain", "completed", m, list(range(m)), threads, start, worker, timeout, first)


# --- py-spy (optional, for investigation) -----------------------------------------------------------


class PySpy:
    def __init__(self, out_dir: Path | None, worker: harness.Worker) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.out: Path | None = None
        if out_dir is None:
            return
        exe = shutil.which("py-spy") or str(harness.VENV_BIN / "py-spy")
        if not Path(exe).exists():
            raise SystemExit("--py-spy needs py-spy: .venv/bin/pip install py-spy (not a project dependency)")
        out_dir.mkdir(parents=True, exist_ok=True)
        self.out = out_dir / f"worker-phase-a-{int(time.time())}.txt"
        self.proc = subprocess.Popen(
            [
                exe,
                "record",
                "--pid",
                str(worker.pid),
                "--subprocesses",
                "--nonblocking",
                "--rate",
                "200",
                "--format",
                "raw",
                "--output",
                str(self.out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        print(f"py-spy: collapsed stacks in {self.out}")


# --- report -------------------------------------------------------------------------------------------


def verdict(rate: float, target: float) -> str:
    return "ok" if rate >= target else "BELOW TARGET"


def print_phase(phase: Phase, label: str, unit: str, target: float | None) -> None:
    tail = f"  target {target:.0f}/s: {verdict(phase.rate, target)}" if target else ""
    per_item = ", ".join(
        f"{g} {phase.cpu.get(g, 0.0) / phase.count * 1000:.1f}" for g in ("worker", "bench", "postgres", "redis")
    )
    print(
        f"Phase {phase.name} {label}: {phase.count} {unit} in {phase.seconds:.2f} s = {phase.rate:.1f}/s{tail}\n"
        f"    submitted in {phase.submit_seconds:.2f} s ({phase.count / phase.submit_seconds:.0f}/s from the bench); "
        f"last DB write at +{phase.db_seconds:.2f} s; {phase.polls} polls\n"
        f"    CPU seconds: {json.dumps(phase.cpu)}\n"
        f"    CPU ms per item: {per_item}; machine {phase.busy_before:.0%} busy just before the phase;"
        f" work not the bench's: {phase.cpu.get('not_bench', 0.0):.1f} CPU s of"
        f" {(os.cpu_count() or 1) * phase.seconds:.0f} available during it\n"
        f"    PostgreSQL sessions seen on baton_bench: {phase.backends_seen} ({phase.backends_new} opened during the"
        f" phase)"
    )


def _interrupt(*_args: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    harness.configure_env()
    IDLE.update(threshold=args.idle_threshold, wait=args.idle_wait)
    signal.signal(signal.SIGTERM, _interrupt)
    # Ctrl+C must stop the worker too, even when started from a shell that ignores SIGINT in the background.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    print(
        f"baton bench: database {harness.DB_NAME} {harness.reset_database(keep=args.keep)}, {harness.REDIS_URL} flushed"
    )
    harness.flush_redis()
    harness.migrate()

    import django

    django.setup()
    from django.db import connections

    initiator, approvers = harness.ensure_users(args.approvers)
    machine = sysinfo.machine_info(args.concurrency, args.pool, args.worker_args)
    print("machine: " + "; ".join(f"{k} {v}" for k, v in machine.items()))

    worker = harness.Worker(args.concurrency, pool=args.pool, extra=args.worker_args.split())
    results: dict[str, Any] = {"machine": machine, "args": {k: str(v) for k, v in vars(args).items()}}
    try:
        ready = worker.start()
        time.sleep(0.5)  # the worker's start-up sweep runs now; let it finish before the clock starts
        print(f"worker: pid {worker.pid}, pool {worker.children()}, ready in {ready:.1f} s (log {worker.log_path})")

        spy = PySpy(args.py_spy, worker)
        try:
            a = phase_a(args.n, args.start_threads, args.start_procs, initiator.pk, worker, args.timeout)
        finally:
            spy.stop()
        print_phase(a, "start -> waiting", "bench_approval instances", TARGETS["A"])
        b = phase_b(args.n, args.decide_procs, [u.pk for u in approvers], worker, args.timeout, a.min_pk)
        print_phase(b, "decide -> completed", "approvals", TARGETS["B"])
        e2e = args.n / (a.seconds + b.seconds)
        print(f"End to end (N / (A + B)): {e2e:.1f}/s  target {TARGETS['E2E']:.0f}/s: {verdict(e2e, TARGETS['E2E'])}")
        c = phase_c(args.chain_n, args.start_threads, initiator.pk, worker, args.timeout)
        print_phase(c, "10-step chain start -> completed", "bench_chain instances", None)
        print(f"    = {c.rate * 10:.0f} automated steps/s")
        results["phases"] = [p.as_dict() for p in (a, b, c)]
        results["end_to_end_per_second"] = round(e2e, 1)
    finally:
        worker.stop()
        if worker.proc and worker.proc.returncode not in (0, None):
            print(f"worker exited with {worker.proc.returncode}; log tail:\n{worker.tail()}")

    queries = None
    if not args.skip_queries:
        from sqlcount import measure

        queries = measure(initiator, approvers[0])
        print("SQL statements per call (in-process, CaptureQueriesContext, after a warm-up instance):")
        for c_ in queries.approval:
            print("    " + c_.line())
        print(
            f"    bench_approval total per instance: {queries.approval_total} statements, "
            f"{queries.approval_commits} commits"
        )
        print("    " + queries.chain_start.line())
        print(
            f"    bench_chain step_execute: {queries.chain_step_avg:.1f} statements per step on average "
            f"({', '.join(str(c_.total) for c_ in queries.chain_steps)}); total per instance {queries.chain_total}"
        )
        results["queries"] = queries.as_dict()
        if args.sql_log:
            with args.sql_log.open("w") as fh:
                for c_ in [*queries.approval, queries.chain_start, *queries.chain_steps]:
                    fh.write(f"-- {c_.label}: {c_.total}\n")
                    for sql in c_.statements:
                        fh.write(sql + ";\n")
                    fh.write("\n")
            print(f"    statements written to {args.sql_log}")
    connections.close_all()

    q_cols = (
        f"{queries.approval[0].total} / {queries.approval[1].total} / {queries.approval[2].total} / "
        f"{queries.approval_total} | {queries.chain_step_avg:.1f}"
        if queries
        else "- | -"
    )
    print("\nSummary (paste into bench/README.md):")
    print(
        "| date (UTC) | N | A start->waiting /s | B decide->done /s | end to end /s | M | C 10-step chain /s |"
        " SQL start / step / decide / total | SQL per chain step |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {machine['date']} | {args.n} | {a.rate:.0f} | {b.rate:.0f} | {e2e:.0f} | {args.chain_n} | {c.rate:.0f} |"
        f" {q_cols} |"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; the worker was stopped", file=sys.stderr)
        sys.exit(130)
