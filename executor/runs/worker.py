"""Executor workers: claim runs from the queue, execute them, record every step.

Crash safety: a run's steps are deterministic given its recorded seeds, so a worker that
takes over a run whose executor died replays the already-recorded steps in memory
(checking they reproduce what was recorded) and records only the missing ones.  Stream
versions make a duplicated step impossible: a second writer of the same version is
refused by the store.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, cast
from uuid import UUID

from eventsourcing.persistence import IntegrityError

from qledger.ledger.app import LedgerApp
from qledger.ledger.errors import UnreadableEntryError
from qledger.ledger.keys import SigningKey
from qledger.ledger.store.artifacts import HotArtifacts
from qledger.ops.metrics import ExecutorMetrics
from qledger.ops.tracing import run_span, tracer
from qledger.runs.breaker import OPEN, BackendBreaker, Transition
from qledger.runs.pipeline import ExecutionContext, StepFailedError, run_steps
from qledger.runs.queue import RunQueue, SweepItems
from qledger.runs.run import TERMINAL, Run
from qledger.runs.shots import shots_taken
from qledger.runs.sweep import SharedSweep, SweepHelper
from qledger.runs.templates import resolver
from qledger.runs.workflow import WorkflowError, WorkflowSpec, parse_workflow

log = logging.getLogger("qledger.executor")

# Steps after which the recorded events are committed.  The steps between are cheap and
# deterministic, so they are saved together with the next of these (one commit instead of
# several); a crash before that commit just redoes them.  Everything before an expensive
# step (optimiser loop, execution) is durable before it starts.
DURABLE_AFTER = frozenset({"transpilation", "hybrid_optimisation", "execution", "pub_result"})

# Fields of a step record that must come out the same when a step is replayed on resume.
REPRODUCIBLE = ("qasm3_sha256", "counts", "result_sha256")


# (the run's settings, its id) -> (the settings it runs with, what to record of the choice)
Router = Callable[[WorkflowSpec, str], tuple[WorkflowSpec, dict[str, Any]]]


class LeaseLostError(Exception):
    pass


class _Lease:
    """Our lease on a run, renewed once half of it is gone (each renewal is a commit)."""

    def __init__(self, queue: RunQueue, run_id: UUID, worker: str, seconds: float) -> None:
        self.queue, self.run_id, self.worker, self.seconds = queue, run_id, worker, seconds
        self.renew_after = time.monotonic() + seconds / 2

    def keep(self) -> None:
        if time.monotonic() > self.renew_after:
            if not self.queue.renew(self.run_id, self.worker, self.seconds):
                raise LeaseLostError(str(self.run_id))
            self.renew_after = time.monotonic() + self.seconds / 2


class Changes:
    """Wakes in-process watchers the moment a run's entry is saved (other processes poll)."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._count = 0

    def notify(self) -> None:
        with self._condition:
            self._count += 1
            self._condition.notify_all()

    def seen(self) -> int:
        with self._condition:
            return self._count

    def wait(self, seen: int, timeout: float) -> None:
        with self._condition:
            self._condition.wait_for(lambda: self._count != seen, timeout)


class Worker:
    def __init__(self, app: LedgerApp, key: SigningKey, queue: RunQueue, ctx: ExecutionContext, *,
                 threads: int = 2, lease_seconds: float = 30.0, poll_seconds: float = 0.2,
                 max_attempts: int = 3, metrics: ExecutorMetrics | None = None,
                 sweep_items: SweepItems | None = None) -> None:
        self.app, self.key, self.queue, self.ctx = app, key, queue, ctx
        self.metrics = metrics or ExecutorMetrics()
        self.name = f"{key.principal}/{uuid.uuid4().hex[:8]}"
        self.lease, self.poll, self.max_attempts = lease_seconds, poll_seconds, max_attempts
        self.ctx.on_breaker = self.record_breaker
        self.ctx.on_calibration = lambda backend, age: self.metrics.calibration_age.labels(backend).set(age)
        self.changes = Changes()
        self.db_system = "postgresql" if app.store.is_postgres else "sqlite"
        # Where policy sends a run (canaries, experimental runs), and what to record of it;
        # set by the server, which knows the governance in force.  None: as defined.
        self.route: Router | None = None
        # Called with a run about to be saved with its last entry, to stage what must change
        # with it (the budget reservation settled to the shots taken); set by the server.
        self.settle: Callable[[Run], None] | None = None
        # With a table of sweep items, the chunks of a sweep are computed by every executor on
        # the store (an idle one helps); results pass between them as artifacts, committed at
        # once rather than staged with this thread's next entries.
        self.items = sweep_items
        self.templates = resolver(app)
        self.results = HotArtifacts(app.ledger)
        self.helper = (None if sweep_items is None else
                       SweepHelper(app, sweep_items, self.results, ctx.catalog, self.name, lease_seconds))
        # Aer spreads one computation over every core, so two at once in one process only slow
        # each other: a process helps with others' sweeps only while it runs nothing itself,
        # one chunk at a time.
        self._running = 0
        self._running_lock = threading.Lock()
        self._helping = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, name=f"qledger-worker-{i}", daemon=True)
                         for i in range(threads)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                claimed = self.queue.claim(self.name, self.lease)
            except Exception:  # store briefly unavailable: try again after the poll interval
                log.exception("claiming work failed")
                claimed = None
            if claimed is None:
                if self._help():
                    continue
                self._wake.wait(self.poll)
                self._wake.clear()
                continue
            run_id, attempt, parent = claimed
            with self._running_lock:
                self._running += 1
            try:
                self.execute(run_id, attempt, parent)
                self.queue.finish(run_id, self.name)
            except LeaseLostError:
                log.warning("lease on run %s lost; another executor has it", run_id)
            except UnreadableEntryError as exc:
                # Retrying cannot help: the entry is recorded as it is, for good.
                log.error("run %s skipped, never retried: %s", run_id, exc)
                self.metrics.unreadable.labels("worker").inc()
                self.queue.finish(run_id, self.name)
            except Exception:
                log.exception("run %s: executor error; the lease will expire and it is retried", run_id)
            finally:
                with self._running_lock:
                    self._running -= 1

    def _help(self) -> bool:
        """Compute a free chunk of someone's sweep; whether there was one."""
        if self.helper is None or self._running or not self._helping.acquire(blocking=False):
            return False
        try:
            return self.helper.help_once()
        except Exception:  # store briefly unavailable: the poll interval passes, then again
            log.exception("helping with a sweep failed")
            return False
        finally:
            self._helping.release()

    def _load(self, run_id: UUID) -> Run:
        run = self.app.find(run_id)
        assert run is not None, f"run {run_id} is queued but has no entry"  # queued with its entry
        return cast(Run, run)

    def execute(self, run_id: UUID, attempt: int = 1, trace_parent: str | None = None) -> None:
        run = self._load(run_id)
        with run_span(str(run_id), trace_parent, **{"qledger.workflow": str(run.workflow.get("name", "")),
                                                     "qledger.attempt": attempt}):
            status = self._execute(run_id, run, attempt)
            log.info("run %s %s after attempt %d", run_id, status, attempt)
        if status in TERMINAL and self.items is not None and run.workflow.get("execute", {}).get("pubs"):
            self.items.forget(run_id)

    def _execute(self, run_id: UUID, run: Run, attempt: int) -> str:
        """Run or resume ``run``; its status at the end."""
        if run.status in TERMINAL:
            return run.status
        if attempt > self.max_attempts:
            return self._fail(run, "ExecutorLost", f"run was claimed {attempt - 1} times without finishing",
                              "executor", "environmental", {})
        step = "workflow"
        lease = _Lease(self.queue, run_id, self.name, self.lease)
        try:
            spec = parse_workflow(run.workflow, self.ctx.catalog.names(), self.templates)
            spec, routing = self.route(spec, str(run_id)) if self.route is not None else (spec, {})
            shared = None
            if self.items is not None and spec.pubs is not None:
                shared = SharedSweep(self.items, self.results, run_id, self.name, self.lease, lease.keep)
            for index, (step, record) in enumerate(run_steps(spec, self.ctx, shared)):
                if index < len(run.steps):
                    self._check_replay(run, index, step, record)
                    continue
                if index == 0:  # the queue time and the routing belong to the run's first step
                    waited = datetime.now(UTC) - run.created_on
                    record = {**record, "queue_ms": round(waited.total_seconds() * 1000, 3),
                              **({"routing": routing} if routing else {})}
                run.record_step(principal=self.key.principal, step=step, record=record)
                if record.get("kind") not in DURABLE_AFTER:
                    continue  # cheap to redo: saved together with the next durable step
                run = self._save_steps(run, run_id)
                if run.status in TERMINAL:
                    return run.status
                lease.keep()
            run.complete(principal=self.key.principal, summary={"steps": len(run.steps), "worker": self.name})
            try:
                self._save(run)
            except IntegrityError:
                recorded = self._load(run_id).status
                if recorded in TERMINAL:
                    return recorded
                raise
            self.changes.notify()
            return run.status
        except (LeaseLostError, IntegrityError):
            raise
        except StepFailedError as failure:
            return self._fail(self._load(run_id), type(failure.cause).__name__, str(failure.cause),
                              failure.step or step, failure.kind, failure.diagnostics)
        except WorkflowError as exc:
            return self._fail(self._load(run_id), type(exc).__name__, str(exc), step, "deterministic",
                              {"settings": run.workflow})
        except Exception as exc:  # unexpected: still recorded, with what was being done
            return self._fail(self._load(run_id), type(exc).__name__, str(exc)[:2000], step, "internal",
                              {"settings": run.workflow})

    def _save(self, run: Run) -> None:
        pending = len(run.pending_events)
        with tracer.start_as_current_span("ledger.append", attributes={
                "qledger.run_id": str(run.id), "qledger.entries": pending, "db.system": self.db_system}):
            if run.status in TERMINAL and self.settle is not None:
                self.settle(run)
            self.app.save(run)
        self.metrics.entries.inc(pending)
        if run.status in TERMINAL:
            self.metrics.run_finished(str(run.workflow.get("name", "")), run.status, run.records,
                                      run.created_on, shots_taken(run.records))

    def _save_steps(self, run: Run, run_id: UUID) -> Run:
        try:
            self._save(run)
        except IntegrityError:
            # Someone appended to the run since we loaded it (a cancellation, or an executor
            # that took the run over): what is recorded wins.
            run = self._load(run_id)
            if run.status in TERMINAL:
                return run
            raise LeaseLostError(str(run_id)) from None
        self.changes.notify()
        return run

    def _check_replay(self, run: Run, index: int, step: str, record: dict[str, Any]) -> None:
        recorded = run.records[index]
        same = run.steps[index] == step and all(
            recorded.get(f) == record.get(f) for f in REPRODUCIBLE if f in recorded)
        if not same:
            raise WorkflowError("workflow", f"resuming step {step!r} did not reproduce its record")

    def _fail(self, run: Run, error_class: str, message: str, step: str, kind: str,
              diagnostics: dict[str, Any]) -> str:
        """Record the failure unless the run already ended; its status either way."""
        if run.status in TERMINAL:
            return run.status
        run.fail(principal=self.key.principal, error_class=error_class, message=message, step=step,
                 kind=kind, diagnostics=diagnostics)
        self._save(run)
        self.changes.notify()
        return run.status

    def record_breaker(self, transition: Transition) -> None:
        self.metrics.breaker(transition.backend, transition.state == OPEN)
        for _ in range(3):  # another executor may record a change of the same breaker at once
            try:
                recorded = self.app.find(BackendBreaker.create_id(transition.backend))
                breaker = cast(BackendBreaker | None, recorded)
                if breaker is None:
                    breaker = BackendBreaker(principal=self.key.principal, backend=transition.backend)
                breaker.change(principal=self.key.principal, state=transition.state,
                               reason=transition.reason)
                self.app.save(breaker)
                return
            except IntegrityError:
                continue
        log.error("could not record breaker transition %s", transition)
