"""The lineage projection: every run's PROV nodes and relations, and an index of runs.

It folds ``provenance.lineage.entry_lineage`` over the whole log, so the graph it holds is the
union of the graphs that the runs' own bundles carry.  Datasets and workflow definitions are
named by content hash, which is what joins runs together: the descendants of a dataset are
every result computed from it, in any run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from qledger.ledger.errors import InvalidRequestError, NotFoundError
from qledger.ledger.projection import ProjectedEntry, Projection, ProjectionDB
from qledger.provenance.lineage import Node, Relation, entry_lineage
from qledger.provenance.run_entries import TERMINAL_EVENTS, continued_runs, run_entries, utc_text

SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class LineageProjection(Projection):
    name = "lineage"
    tables = ("lineage_nodes", "lineage_relations", "lineage_runs", "lineage_run_data")
    ddl = (
        "CREATE TABLE IF NOT EXISTS {lineage_nodes} (id TEXT PRIMARY KEY, kind TEXT NOT NULL, "
        "position {int} NOT NULL, sha256 TEXT, attributes TEXT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS lineage_nodes_by_sha256 ON {lineage_nodes} (sha256)",
        "CREATE TABLE IF NOT EXISTS {lineage_relations} (id TEXT PRIMARY KEY, relation TEXT NOT NULL, "
        "source TEXT NOT NULL, target TEXT NOT NULL, run_id TEXT NOT NULL, position {int} NOT NULL)",
        "CREATE INDEX IF NOT EXISTS lineage_relations_by_source ON {lineage_relations} (source)",
        "CREATE INDEX IF NOT EXISTS lineage_relations_by_target ON {lineage_relations} (target)",
        "CREATE TABLE IF NOT EXISTS {lineage_runs} (run_id TEXT PRIMARY KEY, workflow TEXT NOT NULL, "
        "workflow_sha256 TEXT NOT NULL, owner TEXT NOT NULL, submitted_at TEXT NOT NULL, "
        "position {int} NOT NULL, backend TEXT, status TEXT NOT NULL, last_output TEXT)",
        *(f"CREATE INDEX IF NOT EXISTS lineage_runs_by_{column} ON {{lineage_runs}} ({column}, position)"
          for column in ("workflow", "backend", "owner", "submitted_at")),
        "CREATE TABLE IF NOT EXISTS {lineage_run_data} (run_id TEXT NOT NULL, name TEXT NOT NULL, "
        "sha256 TEXT NOT NULL, PRIMARY KEY (run_id, name))",
        "CREATE INDEX IF NOT EXISTS lineage_run_data_by_sha256 ON {lineage_run_data} (sha256)",
    )
    _RUN_COLUMNS = ("run_id", "workflow", "workflow_sha256", "owner", "submitted_at", "position",
                    "backend", "status", "last_output")

    def apply(self, db: ProjectionDB, entries: Sequence[ProjectedEntry]) -> None:
        runs = self._known_runs(db, entries)
        nodes: dict[str, Node] = {}
        relations: list[tuple[Relation, str, int]] = []
        data: list[tuple[str, str, str]] = []
        for entry, event, run_id in run_entries(entries):
            content = entry.content
            if event == "Submitted":
                runs[run_id] = {
                    "run_id": run_id, "workflow": str(content.payload["workflow"].get("name", "")),
                    "workflow_sha256": content.payload["workflow_sha256"], "owner": content.principal,
                    "submitted_at": utc_text(content.timestamp), "position": entry.position,
                    "backend": None, "status": "submitted", "last_output": None}
            run = runs.get(run_id)
            if run is None:
                continue  # a run whose submission precedes this projection's log: not ours to guess
            step = entry_lineage(content.origin, entry.position, entry.leaf_hash, content,
                                 run["last_output"])
            run["last_output"] = step.output
            for n in step.nodes:
                nodes.setdefault(n.id, n)
            relations += [(r, run_id, entry.position) for r in step.relations]
            if event == "StepRecorded":
                record = content.payload["record"]
                run["status"] = "running"
                if isinstance(record.get("backend"), dict):
                    run["backend"] = str(record["backend"]["name"])
                data += [(run_id, name, d["sha256"]) for name, d in record.get("datasets", {}).items()]
            elif event in TERMINAL_EVENTS:
                run["status"] = TERMINAL_EVENTS[event]
        db.insert("lineage_nodes", ("id", "kind", "position", "sha256", "attributes"),
                  [(n.id, n.kind, n.position, n.sha256, json.dumps(n.attributes, sort_keys=True))
                   for n in nodes.values()], "(id) DO NOTHING")
        db.insert("lineage_relations", ("id", "relation", "source", "target", "run_id", "position"),
                  [(r.id, r.relation, r.source, r.target, run_id, position)
                   for r, run_id, position in relations], "(id) DO NOTHING")
        db.insert("lineage_run_data", ("run_id", "name", "sha256"), data, "(run_id, name) DO NOTHING")
        db.insert("lineage_runs", self._RUN_COLUMNS, [tuple(run[c] for c in self._RUN_COLUMNS)
                                                      for run in runs.values()],
                  "(run_id) DO UPDATE SET backend = excluded.backend, status = excluded.status, "
                  "last_output = excluded.last_output")

    def _known_runs(self, db: ProjectionDB, entries: Sequence[ProjectedEntry]) -> dict[str, dict[str, Any]]:
        """The runs this page continues, as the table has them."""
        return {r["run_id"]: {c: r[c] for c in self._RUN_COLUMNS}
                for r in db.rows_in("lineage_runs", "run_id", continued_runs(entries))}


# -- queries ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Subgraph:
    nodes: list[Node]
    relations: list[Relation]


def _node(row: Any) -> Node:
    return Node(row["id"], row["kind"], json.loads(row["attributes"]))


def find_nodes(db: ProjectionDB, reference: str) -> list[str]:
    """Node ids an auditor's reference names: a node id, or an artifact's sha256 digest."""
    if SHA256_HEX.match(reference):
        rows = db.rows("SELECT id FROM {lineage_nodes} WHERE sha256 = {p} ORDER BY position, id",
                       (reference,))
    else:
        rows = db.rows("SELECT id FROM {lineage_nodes} WHERE id = {p}", (reference,))
    if not rows:
        raise NotFoundError(f"no lineage node {reference!r} (a node id such as qledger:dataset/<sha256>, "
                            "or an artifact's sha256)")
    return [str(r["id"]) for r in rows]


def walk(db: ProjectionDB, start: Sequence[str], direction: str) -> Subgraph:
    """``start`` and its ancestors (what it came from) or descendants (what came from it)."""
    if direction not in ("ancestors", "descendants"):
        raise ValueError(f"direction must be ancestors or descendants, not {direction!r}")
    # Relations point from the later thing to the earlier: ancestors follow them forward.
    near, far = ("source", "target") if direction == "ancestors" else ("target", "source")
    # The walk records each relation it follows: by closure those are exactly the relations
    # of the subgraph, found through the index on their near end only.
    walked = ("WITH RECURSIVE walk(id, via) AS ("
              f" SELECT id, NULL FROM {{lineage_nodes}} WHERE id IN ({db.in_list(start)})"
              f" UNION SELECT r.{far}, r.id FROM {{lineage_relations}} r JOIN walk w ON r.{near} = w.id) ")
    nodes = [_node(r) for r in db.rows(
        walked + "SELECT n.id, n.kind, n.attributes FROM {lineage_nodes} n "
        "WHERE n.id IN (SELECT id FROM walk) ORDER BY n.position, n.id", list(start))]
    relations = [Relation(r["id"], r["relation"], r["source"], r["target"]) for r in db.rows(
        walked + "SELECT r.id, r.relation, r.source, r.target FROM {lineage_relations} r "
        "WHERE r.id IN (SELECT via FROM walk) ORDER BY r.position, r.id", list(start))]
    return Subgraph(nodes, relations)


def artifact_lineage(db: ProjectionDB, reference: str) -> Subgraph:
    """Everything an artifact came from and everything that came from it."""
    start = find_nodes(db, reference)
    up, down = walk(db, start, "ancestors"), walk(db, start, "descendants")
    nodes = {n.id: n for n in up.nodes + down.nodes}
    relations = {r.id: r for r in up.relations + down.relations}
    return Subgraph(sorted(nodes.values(), key=lambda n: (n.position, n.id)),
                    sorted(relations.values(), key=lambda r: r.id))


@dataclass(frozen=True)
class RunFilter:
    workflow: str | None = None
    backend: str | None = None
    dataset: str | None = None  # a data version: the dataset's sha256
    owner: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 100

    @property
    def narrows(self) -> bool:
        return any(v is not None for v in (self.workflow, self.backend, self.dataset, self.owner,
                                            self.since, self.until))


def run_filter(workflow: str, backend: str, dataset: str, owner: str, since: str, until: str,
               limit: int) -> RunFilter:
    """A filter from a request's text fields, an empty one not filtering; times are RFC 3339
    (UTC if they carry no offset)."""
    def when(text: str, field: str) -> datetime | None:
        if not text:
            return None
        try:
            return datetime.fromisoformat(text)
        except ValueError:
            raise InvalidRequestError(f"not an RFC 3339 time: {text!r}", field) from None

    return RunFilter(workflow or None, backend or None, dataset or None, owner or None,
                     when(since, "since"), when(until, "until"), limit)


def find_runs(db: ProjectionDB, wanted: RunFilter) -> list[dict[str, Any]]:
    """Runs matching every given criterion, newest first."""
    clauses, params = [], []
    for column, value in (("r.workflow", wanted.workflow), ("r.backend", wanted.backend),
                          ("r.owner", wanted.owner)):
        if value is not None:
            clauses.append(f"{column} = {{p}}")
            params.append(value)
    if wanted.dataset is not None:
        clauses.append("EXISTS (SELECT 1 FROM {lineage_run_data} d WHERE d.run_id = r.run_id "
                       "AND d.sha256 = {p})")
        params.append(wanted.dataset)
    if wanted.since is not None:
        clauses.append("r.submitted_at >= {p}")
        params.append(utc_text(wanted.since))
    if wanted.until is not None:
        clauses.append("r.submitted_at < {p}")
        params.append(utc_text(wanted.until))
    where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    rows = db.rows("SELECT run_id, workflow, workflow_sha256, owner, submitted_at, position, backend, "
                   f"status FROM {{lineage_runs}} r{where} ORDER BY r.position DESC "
                   f"LIMIT {int(wanted.limit)}", params)
    return [dict(r) for r in rows]
