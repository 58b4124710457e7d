"""The Ledger gRPC service: entries, checkpoints, proofs, and a run's bundle, lineage and
report.  Thin, like the Executor service: rules live in ``ledger`` and ``provenance``."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any, TypeVar
from uuid import UUID

import grpc

from qledger.api import qledger_pb2 as pb
from qledger.api import qledger_pb2_grpc as pb_grpc
from qledger.governance.policy import ALL_PROJECTS
from qledger.ledger import dsse
from qledger.ledger.app import LedgerApp
from qledger.ledger.checkpoint import parse_note
from qledger.ledger.content import EntryContent
from qledger.ledger.errors import (
    InvalidRequestError,
    NotFoundError,
    OutOfRangeError,
    PreconditionError,
    ProofError,
)
from qledger.ledger.keys import SigningKey
from qledger.ledger.projection import ProjectionRunner
from qledger.ledger.source import EntryRow
from qledger.provenance.bundle_export import export_recorded
from qledger.provenance.lineage import document_json, lineage_json, prov_document
from qledger.provenance.lineage_index import artifact_lineage
from qledger.provenance.projections import resolve_run
from qledger.provenance.report import report, run_facts
from qledger.rpc.authz import Authorizer
from qledger.rpc.entries import MAX_PROOFS_PER_CALL, entry_message
from qledger.rpc.status import rpc_method
from qledger.runs.workflow import project_of

Proven = TypeVar("Proven")


class LedgerService(pb_grpc.LedgerServicer):
    def __init__(self, app: LedgerApp, checkpoint_key: SigningKey | None, authz: Authorizer,
                 projections: ProjectionRunner, export_key: SigningKey | None = None) -> None:
        self.app, self.checkpoint_key, self.export_key = app, checkpoint_key, export_key
        self.authz, self.projections = authz, projections
        self.source = app.source()

    def _stream(self, run_id: str, context: grpc.ServicerContext, rpc: str, who: str,
                field: str = "run_id") -> list[EntryRow]:
        """A run's entries, once the caller (``authz.caller``, identified before any lookup) is
        allowed ``rpc`` in the run's project."""
        try:
            stream_id = UUID(run_id)
        except ValueError:
            raise InvalidRequestError(f"{run_id!r} is not a run id", field) from None
        rows = self.source.stream_entries(stream_id, 0)
        if not rows:
            raise NotFoundError(f"no run {run_id}", field)
        submitted = EntryContent.from_bytes(dsse.parse(rows[0].state or b"").payload)
        self.authz.permit(context, who, rpc, project_of(submitted.payload.get("workflow") or {}))
        return rows

    def _run_ref(self, request: pb.RunRef) -> str:
        """The run a RunRef names: its run_id, or the run that generated its artifact."""
        if bool(request.run_id) == bool(request.artifact):
            raise InvalidRequestError("give exactly one of run_id and artifact", "run_id")
        if request.run_id:
            return str(request.run_id)
        try:
            return str(resolve_run(self.app, self.projections, request.artifact))
        except NotFoundError as exc:
            raise NotFoundError(str(exc), "artifact") from None

    @rpc_method
    def ExportBundle(self, request: pb.RunRef, context: grpc.ServicerContext) -> pb.Bundle:
        who = self.authz.caller(context, "ExportBundle")
        rows = self._stream(self._run_ref(request), context, "ExportBundle", who)
        if self.export_key is None or self.checkpoint_key is None:
            raise PreconditionError("this server holds no export or checkpoint key; "
                                    "use `qledger export-bundle`")
        run_id = UUID(rows[0].originator_id or request.run_id)
        data = export_recorded(self.app, run_id, self.export_key, self.checkpoint_key)
        return pb.Bundle(envelope=data)

    @rpc_method
    def GetLineage(self, request: pb.RunRef, context: grpc.ServicerContext) -> pb.Lineage:
        """A run's lineage from its entries; an artifact's (ancestors and descendants, across
        runs) from the lineage projection, brought up to date first."""
        who = self.authz.caller(context, "GetLineage")
        if request.artifact and not request.run_id:
            self.authz.permit(context, who, "GetLineage", ALL_PROJECTS)  # it may span projects
            self.projections.catch_up(["lineage"])
            try:
                graph = self.projections.read("lineage", lambda db: artifact_lineage(db, request.artifact))
            except NotFoundError as exc:
                raise NotFoundError(str(exc), "artifact") from None
            prov = document_json(prov_document(graph.nodes, graph.relations))
        else:
            rows = self._stream(self._run_ref(request), context, "GetLineage", who)
            prov = lineage_json(self.app.require_origin(), [(r.position, r.state or b"") for r in rows])
        return pb.Lineage(prov_json=json.dumps(prov, sort_keys=True))

    @rpc_method
    def GetReport(self, request: pb.GetReportRequest, context: grpc.ServicerContext) -> pb.Report:
        who = self.authz.caller(context, "GetReport")
        first = run_facts([r.state or b"" for r in self._stream(request.run_id, context, "GetReport", who)])
        second = None
        if request.against_run_id:
            second = run_facts([r.state or b"" for r in self._stream(request.against_run_id, context,
                                                                     "GetReport", who, "against_run_id")])
        return pb.Report(json=json.dumps(report(first, second), sort_keys=True))

    @rpc_method
    def GetEntry(self, request: pb.GetEntryRequest, context: grpc.ServicerContext) -> pb.LedgerEntry:
        self.authz.require(context, "GetEntry", ALL_PROJECTS)
        row = self.source.entry_at(request.position)
        if row is None:
            raise NotFoundError(f"no entry at position {request.position}", "position")
        return entry_message(row)

    @rpc_method
    def StreamEntries(self, request: pb.StreamEntriesRequest,
                      context: grpc.ServicerContext) -> Iterator[pb.LedgerEntry]:
        self.authz.require(context, "StreamEntries", ALL_PROJECTS)
        if request.from_position < 1 or request.limit < 0:
            raise InvalidRequestError("from_position >= 1 and limit >= 0", "from_position")
        stop = request.from_position + request.limit - 1 if request.limit else None
        for row in self.source.entries(request.from_position, stop):
            if not context.is_active():
                return
            yield entry_message(row)

    @rpc_method
    def GetCheckpoint(self, request: pb.GetCheckpointRequest, context: grpc.ServicerContext) -> pb.Checkpoint:
        self.authz.require(context, "GetCheckpoint", ALL_PROJECTS)
        note = self.app.latest_checkpoint()
        if note is None or parse_note(note).checkpoint.tree_size < self.app.tree_size():
            if self.checkpoint_key is not None:
                note = self.app.checkpoint(self.checkpoint_key)
            elif note is None:
                raise PreconditionError("no checkpoint yet")
        checkpoint = parse_note(note).checkpoint
        return pb.Checkpoint(tree_size=checkpoint.tree_size, root_hash=checkpoint.root_hash, note=note)

    def _check_tree_size(self, size: int) -> None:
        """A proof's tree (0: the current one) must exist; checked apart from the positions so
        that the refusal names the field at fault (a tree only grows, so no race)."""
        current = self.app.tree_size()
        if not 0 <= size <= current:
            raise OutOfRangeError(f"tree size {size} is outside 1..{current}", "tree_size")

    @rpc_method
    def GetInclusionProof(self, request: pb.GetInclusionProofRequest,
                          context: grpc.ServicerContext) -> pb.InclusionProof:
        self.authz.require(context, "GetInclusionProof", ALL_PROJECTS)
        self._check_tree_size(request.tree_size)
        return _inclusion_message(_proof(lambda: self.app.inclusion_proof(request.position,
                                                                          request.tree_size or None)))

    @rpc_method
    def GetInclusionProofs(self, request: pb.GetInclusionProofsRequest,
                           context: grpc.ServicerContext) -> pb.InclusionProofs:
        """Several entries proven in one tree with one call (a run's entries, for instance)."""
        self.authz.require(context, "GetInclusionProofs", ALL_PROJECTS)
        if not 0 < len(request.positions) <= MAX_PROOFS_PER_CALL:
            raise InvalidRequestError(f"ask for 1..{MAX_PROOFS_PER_CALL} positions", "positions")
        self._check_tree_size(request.tree_size)
        proofs = _proof(lambda: self.app.inclusion_proofs(list(request.positions), request.tree_size or None),
                        "positions")
        return pb.InclusionProofs(proofs=[_inclusion_message(p) for p in proofs])

    @rpc_method
    def GetConsistencyProof(self, request: pb.GetConsistencyProofRequest,
                            context: grpc.ServicerContext) -> pb.ConsistencyProof:
        self.authz.require(context, "GetConsistencyProof", ALL_PROJECTS)
        p = _proof(lambda: self.app.consistency_proof(request.first, request.second))
        return pb.ConsistencyProof(first=p["first"], second=p["second"],
                                   path=[bytes.fromhex(h) for h in p["consistency_path"]],
                                   first_root=bytes.fromhex(p["first_root"]),
                                   second_root=bytes.fromhex(p["second_root"]))


def _proof(make: Callable[[], Proven], field: str = "position") -> Proven:
    """A proof, or OUT_OF_RANGE naming ``field`` (the ledger's ProofError says why)."""
    try:
        return make()
    except ProofError as exc:
        raise OutOfRangeError(str(exc), field) from None


def _inclusion_message(proof: dict[str, Any]) -> pb.InclusionProof:
    return pb.InclusionProof(leaf_index=proof["leaf_index"], tree_size=proof["tree_size"],
                             leaf_hash=bytes.fromhex(proof["leaf_hash"]),
                             path=[bytes.fromhex(h) for h in proof["inclusion_path"]],
                             root_hash=bytes.fromhex(proof["root_hash"]))
