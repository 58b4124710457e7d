"""The executor's projections, wired to a ledger app: which exist, how they follow the log,
and how an auditor's reference (run id or artifact) is resolved against them."""

from __future__ import annotations

from typing import Any, cast
from uuid import UUID

from psycopg.conninfo import make_conninfo

from qledger.ledger.app import LedgerApp
from qledger.ledger.errors import NotFoundError
from qledger.ledger.follow import ProjectionFollower
from qledger.ledger.projection import ProjectionRunner
from qledger.provenance.lineage_index import LineageProjection, find_nodes
from qledger.provenance.operations import OperationsProjection
from qledger.provenance.usage import UsageProjection


def projection_runner(app: LedgerApp, page_size: int = 1000) -> ProjectionRunner:
    return ProjectionRunner(app.ledger, app.source(),
                            [LineageProjection(), OperationsProjection(), UsageProjection()], page_size)


def projection_follower(app: LedgerApp, runner: ProjectionRunner,
                        poll_seconds: float = 2.0) -> ProjectionFollower:
    """LISTEN on PostgreSQL (the channel the library NOTIFYs on every insert), polling on SQLite."""
    if not app.store.is_postgres:
        return ProjectionFollower(runner, poll_seconds=poll_seconds)
    env = app.store.env
    conninfo = make_conninfo(host=env["POSTGRES_HOST"], port=env["POSTGRES_PORT"],
                             dbname=env["POSTGRES_DBNAME"], user=env["POSTGRES_USER"],
                             password=env.get("POSTGRES_PASSWORD") or None)
    channel = cast(Any, app.recorder).channel_name
    return ProjectionFollower(runner, poll_seconds=poll_seconds, conninfo=conninfo, channel=channel)


def resolve_run(app: LedgerApp, runner: ProjectionRunner, reference: str) -> UUID:
    """The run a reference names: a run id, or an artifact (node id or sha256) it generated."""
    try:
        return UUID(reference)
    except ValueError:
        pass
    node = runner.read_current("lineage", lambda db: find_nodes(db, reference))[0]
    position = runner.read("lineage", lambda db: db.rows(
        "SELECT position FROM {lineage_nodes} WHERE id = {p}", (node,)))[0]["position"]
    row = app.source().entry_at(int(position))
    if row is None or row.originator_id is None:
        raise NotFoundError(f"the entry at position {position} that recorded {reference} is missing")
    return UUID(row.originator_id)
