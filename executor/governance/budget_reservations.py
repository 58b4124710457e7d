"""Budget reservations: what each project's accepted runs may take, counted in the same
transaction that records each run, so that concurrent submissions cannot overrun a quota.

The usage projection follows the ledger and lags it; two submissions checked against it at
once both see the last free run.  Here each accepted run adds itself to its project's row as
part of the append that records it, and a CHECK constraint refuses the row once it passes the
quota's limits: the whole transaction (entry, queue row, reservation) rolls back.  A run that
ends gives back the shots it reserved but did not take, with its last entry.  Only runs
and shots can be reserved up front; executor seconds are known after a run, so that limit is
checked against the projection alone.
"""

from __future__ import annotations

from typing import Any

from qledger.runs.queue import StateTable
from qledger.runs.run import Run
from qledger.runs.shots import reserved_shots, shots_taken
from qledger.runs.workflow import project_of

TABLE = "budget_reservations"
CONSTRAINT = "qledger_within_budget"


class BudgetReservations(StateTable):
    name = TABLE
    probe = "project, runs, shots, max_runs, max_shots"

    def create(self, service_role: str | None = None) -> None:
        integer = "bigint" if self.is_pg else "INTEGER"
        self._run(f"CREATE TABLE IF NOT EXISTS {{q}} (project TEXT PRIMARY KEY, runs {integer} NOT NULL, "
                  f"shots {integer} NOT NULL, max_runs {integer}, max_shots {integer}, "
                  f"CONSTRAINT {CONSTRAINT} CHECK ((max_runs IS NULL OR runs <= max_runs) "
                  "AND (max_shots IS NULL OR shots <= max_shots)))")
        self._grant(service_role, "SELECT, INSERT, UPDATE, DELETE")

    def reserve_with_next_append(self, project: str, shots: int, quota: dict[str, Any] | None,
                                 used: dict[str, float]) -> None:
        """Count a run reserving ``shots`` against ``project``'s quota in the transaction that
        appends the calling thread's next entries.  ``used`` (the usage projection) starts the
        project's row when it has none yet.  Without a quota the row is dropped, so a quota set
        later starts again from the projection instead of from a count that stopped."""
        if not quota:
            self.writer.stage_statement(self._sql("DELETE FROM {q} WHERE project = %s"), (project,))
            return
        self.writer.stage_statement(self._sql(
            "INSERT INTO {q} (project, runs, shots, max_runs, max_shots) VALUES (%s, %s, %s, %s, %s) "
            "ON CONFLICT (project) DO UPDATE SET runs = {q}.runs + 1, shots = {q}.shots + %s, "
            "max_runs = excluded.max_runs, max_shots = excluded.max_shots"),
            (project, int(used["runs"]) + 1, int(used["shots"]) + shots, quota.get("runs"),
             quota.get("shots"), shots))

    def settle_with_next_append(self, run: Run) -> None:
        """Give back what an ending run reserved but did not take, in the transaction that
        appends its last entry (the usage projection settles the same way)."""
        unused = reserved_shots(run.workflow) - shots_taken(run.records)
        if unused > 0:
            self.writer.stage_statement(self._sql("UPDATE {q} SET shots = shots - %s WHERE project = %s"),
                                        (unused, project_of(run.workflow)))

    def reserved(self, project: str) -> dict[str, int] | None:
        row = self._run("SELECT runs, shots FROM {q} WHERE project = %s", (project,), commit=False,
                        fetch="one")
        return None if row is None else {"runs": int(row["runs"]), "shots": int(row["shots"])}

    def _sql(self, statement: str) -> str:
        return statement.format(q=self.table).replace("%s", self.writer.placeholder)


def over_budget(error: BaseException) -> bool:
    """Whether a failed append was refused by a project's reservation row (the CHECK)."""
    return any(CONSTRAINT in str(e) for e in (error, error.__cause__, error.__context__) if e is not None)
