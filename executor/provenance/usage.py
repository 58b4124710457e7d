"""The usage projection: per project, runs accepted, shots, executor seconds spent.

Budgets are checked against it before a run is accepted, so a run counts what it *may* take
(``reserved_shots``) from its acceptance on: a run that would cross a budget is refused before
it consumes anything.  When the run ends, its reservation is settled to the shots it took
(``shots_taken`` of its steps), the count the operations view and the metrics show.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from qledger.ledger.projection import ProjectedEntry, Projection, ProjectionDB
from qledger.provenance.run_entries import TERMINAL_EVENTS, continued_runs, run_entries
from qledger.runs.shots import reserved_shots, step_shots
from qledger.runs.workflow import project_of


class UsageProjection(Projection):
    name = "usage"
    tables = ("usage_projects", "usage_runs")
    version = 2  # usage_runs gained reserved_shots and shots_taken
    ddl = (
        "CREATE TABLE IF NOT EXISTS {usage_projects} (project TEXT PRIMARY KEY, runs {int} NOT NULL, "
        "shots {int} NOT NULL, executor_ms {int} NOT NULL)",
        "CREATE TABLE IF NOT EXISTS {usage_runs} (run_id TEXT PRIMARY KEY, project TEXT NOT NULL, "
        "started_at TEXT, reserved_shots {int} NOT NULL, shots_taken {int} NOT NULL)",
    )

    def apply(self, db: ProjectionDB, entries: Sequence[ProjectedEntry]) -> None:
        runs: dict[str, dict[str, Any]] = {
            row["run_id"]: {"project": row["project"], "started_at": row["started_at"],
                            "reserved": int(row["reserved_shots"]), "taken": int(row["shots_taken"])}
            for row in db.rows_in("usage_runs", "run_id", continued_runs(entries))}
        # project -> [runs, shots, executor_ms] added here; whole numbers, so that the sums do not
        # depend on how entries fall into pages (a rebuild must equal the followed state).
        totals: dict[str, list[int]] = {}

        def add(project: str, runs_: int = 0, shots: int = 0, ms: int = 0) -> None:
            t = totals.setdefault(project, [0, 0, 0])
            t[0], t[1], t[2] = t[0] + runs_, t[1] + shots, t[2] + ms

        for entry, event, run_id in run_entries(entries):
            content = entry.content
            if event == "Submitted":
                workflow = content.payload["workflow"]
                reserved = reserved_shots(workflow)
                runs[run_id] = {"project": project_of(workflow), "started_at": None,
                                "reserved": reserved, "taken": 0}
                add(project_of(workflow), 1, reserved)
                continue
            run = runs.get(run_id)
            if run is None:
                continue
            if event == "StepRecorded":
                run["started_at"] = run["started_at"] or content.timestamp
                run["taken"] += step_shots(content.payload["record"])
            elif event in TERMINAL_EVENTS:
                add(run["project"], shots=run["taken"] - run["reserved"])
                run["reserved"] = run["taken"]  # settled: a later entry cannot settle it twice
                if run["started_at"] is not None:
                    ended = datetime.fromisoformat(content.timestamp)
                    spent = ended - datetime.fromisoformat(run["started_at"])
                    add(run["project"], ms=round(spent.total_seconds() * 1000))
        db.insert("usage_runs", ("run_id", "project", "started_at", "reserved_shots", "shots_taken"),
                  [(r, v["project"], v["started_at"], v["reserved"], v["taken"]) for r, v in runs.items()],
                  "(run_id) DO UPDATE SET started_at = excluded.started_at, "
                  "reserved_shots = excluded.reserved_shots, shots_taken = excluded.shots_taken")
        db.insert("usage_projects", ("project", "runs", "shots", "executor_ms"),
                  [(p, *t) for p, t in totals.items()],
                  "(project) DO UPDATE SET runs = {usage_projects}.runs + excluded.runs, "
                  "shots = {usage_projects}.shots + excluded.shots, "
                  "executor_ms = {usage_projects}.executor_ms + excluded.executor_ms")


def project_usage(db: ProjectionDB, project: str) -> dict[str, float]:
    rows = db.rows("SELECT runs, shots, executor_ms FROM {usage_projects} WHERE project = {p}", (project,))
    if not rows:
        return {"runs": 0, "shots": 0, "executor_seconds": 0.0}
    return {"runs": int(rows[0]["runs"]), "shots": int(rows[0]["shots"]),
            "executor_seconds": float(rows[0]["executor_ms"]) / 1000}
