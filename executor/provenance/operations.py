"""The operations projection: one row per run with its timings, retries and circuit metrics,
and the per-backend / per-workflow view built from those rows.

Times come from the entries' own timestamps: queue time runs from submission to the first
recorded step, execution time from there to the run's end.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from qledger.ledger.projection import ProjectedEntry, Projection, ProjectionDB
from qledger.provenance.run_entries import TERMINAL_EVENTS, continued_runs, run_entries, utc_text
from qledger.runs.shots import step_shots

COLUMNS = ("run_id", "workflow", "backend", "status", "submitted_at", "started_at", "finished_at",
           "queue_ms", "execution_ms", "retries", "shots", "depth", "gate_count", "variant", "tvd")


def _ms_between(start: str | None, end: str | None) -> float | None:
    if start is None or end is None:
        return None
    return round((datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds() * 1000, 3)


class OperationsProjection(Projection):
    name = "operations"
    tables = ("ops_runs",)
    ddl = (
        "CREATE TABLE IF NOT EXISTS {ops_runs} (run_id TEXT PRIMARY KEY, workflow TEXT NOT NULL, "
        "backend TEXT, status TEXT NOT NULL, submitted_at TEXT NOT NULL, started_at TEXT, "
        "finished_at TEXT, queue_ms {real}, execution_ms {real}, retries {int} NOT NULL, "
        "shots {int} NOT NULL, depth {int}, gate_count {int}, variant TEXT, tvd {real})",
    )

    def apply(self, db: ProjectionDB, entries: Sequence[ProjectedEntry]) -> None:
        runs = {row["run_id"]: {c: row[c] for c in COLUMNS}
                for row in db.rows_in("ops_runs", "run_id", continued_runs(entries))}
        for entry, event, run_id in run_entries(entries):
            content = entry.content
            at = utc_text(content.timestamp)
            if event == "Submitted":
                runs[run_id] = {**dict.fromkeys(COLUMNS), "run_id": run_id, "status": "submitted",
                                "workflow": str(content.payload["workflow"].get("name", "")),
                                "submitted_at": at, "retries": 0, "shots": 0}
            run = runs.get(run_id)
            if run is None:
                continue
            if event == "StepRecorded":
                self._step(run, content.payload["record"], at)
            elif event in TERMINAL_EVENTS:
                run["status"], run["finished_at"] = TERMINAL_EVENTS[event], at
                run["queue_ms"] = _ms_between(run["submitted_at"], run["started_at"] or at)
                run["execution_ms"] = _ms_between(run["started_at"], at)
        updates = ", ".join(f"{c} = excluded.{c}" for c in COLUMNS[1:])
        db.insert("ops_runs", COLUMNS, [tuple(run[c] for c in COLUMNS) for run in runs.values()],
                  f"(run_id) DO UPDATE SET {updates}")

    @staticmethod
    def _step(run: dict[str, Any], record: dict[str, Any], at: str) -> None:
        run["status"] = "running"
        run["started_at"] = run["started_at"] or at
        if isinstance(record.get("routing"), dict):
            run["variant"] = record["routing"]["variant"]
        if record.get("kind") == "report" and record.get("total_variation_distance") is not None:
            # Distance from the ideal distribution: the quality a canary is compared on.
            run["tvd"] = record["total_variation_distance"]
        if record.get("kind") == "transpilation":
            run["depth"] = record.get("depth")
            run["gate_count"] = sum(record.get("gate_counts", {}).values())
        if record.get("kind") == "execution":
            run["backend"] = record.get("backend", {}).get("name")
            run["retries"] += len(record.get("attempts", [])) + len(record.get("quality_rounds", []))
        run["shots"] += step_shots(record)


# -- the view -----------------------------------------------------------------------------

def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile: a value that occurred, never an interpolation."""
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def operations_view(rows: Sequence[dict[str, Any]], by: str) -> list[dict[str, Any]]:
    """Per ``by`` (backend or workflow): runs, success rate, retries, time percentiles,
    shots, and transpiled depth and gate count per day."""
    if by not in ("backend", "workflow", "variant"):
        raise ValueError(f"group by backend, workflow or variant, not {by!r}")
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[str(row[by] or "(none)")].append(row)
    view = []
    for key, runs in sorted(groups.items()):
        finished = [r for r in runs if r["status"] in ("completed", "failed")]
        days: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in runs:
            if r["depth"] is not None:
                days[r["submitted_at"][:10]].append(r)
        view.append({
            by: key, "runs": len(runs),
            "completed": sum(r["status"] == "completed" for r in runs),
            "failed": sum(r["status"] == "failed" for r in runs),
            "success_rate": (round(sum(r["status"] == "completed" for r in finished) / len(finished), 4)
                             if finished else None),
            "retries": sum(int(r["retries"]) for r in runs),
            "mean_tvd": (round(sum(float(r["tvd"]) for r in with_tvd) / len(with_tvd), 6)
                         if (with_tvd := [r for r in runs if r["tvd"] is not None]) else None),
            "shots": sum(int(r["shots"]) for r in runs),
            **{f"{name}_ms_p{q}": percentile([float(r[f"{name}_ms"]) for r in runs
                                               if r[f"{name}_ms"] is not None], q)
               for name in ("queue", "execution") for q in (50, 95, 99)},
            "circuits_by_day": [
                {"day": day, "runs": len(rs), "mean_depth": round(sum(r["depth"] for r in rs) / len(rs), 2),
                 "mean_gate_count": round(sum(r["gate_count"] for r in rs) / len(rs), 2)}
                for day, rs in sorted(days.items())],
        })
    return view


def operation_rows(db: ProjectionDB, since: datetime | None = None,
                   until: datetime | None = None) -> list[dict[str, Any]]:
    clauses, params = [], []
    if since is not None:
        clauses.append("submitted_at >= {p}")
        params.append(utc_text(since))
    if until is not None:
        clauses.append("submitted_at < {p}")
        params.append(utc_text(until))
    where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    return [dict(r) for r in db.rows(f"SELECT * FROM {{ops_runs}}{where}", params)]
