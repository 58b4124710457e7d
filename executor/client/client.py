"""``Client``: a session with one qledger server, signing as one principal.

Every failed call raises qledger's error for its status (``InvalidRequestError`` with the
offending ``field``, ``PermissionDeniedError``, ``ExhaustedError`` ...; ``CallFailedError`` when
the server could not be reached or broke), and a run that ends without results raises
``RunFailedError``.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc

from qledger.api import qledger_pb2 as pb
from qledger.api import qledger_pb2_grpc as pb_grpc
from qledger.client.results import RecordedEntry, RunResult, run_result
from qledger.ledger import dsse, merkle
from qledger.ledger.checkpoint import parse_note
from qledger.ledger.content import EntryContent
from qledger.ledger.errors import RunFailedError
from qledger.ledger.keys import KeyStore, SigningKey
from qledger.rpc.channel import client_channel
from qledger.rpc.entries import MAX_PROOFS_PER_CALL
from qledger.rpc.status import refusal_from
from qledger.runs.commands import cancel_command, submit_command

T = TypeVar("T")
Progress = Callable[[str], None]
WorkflowSource = str | Path | dict[str, Any]


@contextmanager
def _calls() -> Iterator[None]:
    """A failed call as qledger's error for its status."""
    try:
        yield
    except grpc.RpcError as exc:
        raise refusal_from(exc) from None


def _material(value: bytes | str | Path | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


def workflow_of(source: WorkflowSource) -> dict[str, Any]:
    """A definition given as a dict, a JSON or YAML file, or the name of a shipped workflow."""
    from qledger.runs.reference_workflows import load, names
    from qledger.runs.workflow import read_workflow

    if isinstance(source, dict):
        return source
    if isinstance(source, str) and source in names():
        return load(source)
    return read_workflow(Path(source))


class Client:
    """Calls one server as one principal (its key from ``$QLEDGER_HOME`` unless given).

    Plaintext on loopback by default; ``ca`` (the server's CA) for TLS, with ``cert`` and
    ``key`` (the client certificate) for mutual TLS, each PEM bytes or a file path."""

    def __init__(self, server: str = "127.0.0.1:50051", principal: str = "client", *,
                 signing_key: SigningKey | None = None, ca: bytes | str | Path | None = None,
                 cert: bytes | str | Path | None = None, key: bytes | str | Path | None = None,
                 server_name: str | None = None) -> None:
        self.key = signing_key or KeyStore.default().load(principal)
        self.channel = client_channel(server, _material(ca), _material(cert), _material(key), server_name,
                                      self.key)
        self.executor = pb_grpc.ExecutorStub(self.channel)  # type: ignore[no-untyped-call]
        self.ledger = pb_grpc.LedgerStub(self.channel)  # type: ignore[no-untyped-call]
        self._origin: str | None = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    @property
    def origin(self) -> str:
        """The ledger's origin, which every signed command names (from its checkpoint)."""
        if self._origin is None:
            self._origin = parse_note(self.checkpoint()).checkpoint.origin
        return self._origin

    def checkpoint(self) -> str:
        """The server's current signed checkpoint note."""
        with _calls():
            return str(self.ledger.GetCheckpoint(pb.GetCheckpointRequest(), timeout=30).note)

    def inclusion_proof(self, position: int, tree_size: int) -> list[bytes]:
        """The RFC 9162 inclusion proof of the entry at ``position`` in the tree of ``tree_size``."""
        with _calls():
            proof = self.ledger.GetInclusionProof(pb.GetInclusionProofRequest(
                position=position, tree_size=tree_size), timeout=30)
        return [bytes(h) for h in proof.path]

    def inclusion_proofs(self, positions: Sequence[int], tree_size: int) -> dict[int, list[bytes]]:
        """The inclusion proofs of several entries in the tree of ``tree_size`` (0: the current
        tree, the same one for all of them), by position: a call per thousand, or a call each
        from a server without ``GetInclusionProofs``."""
        proofs: dict[int, list[bytes]] = {}
        wanted = list(dict.fromkeys(positions))
        for start in range(0, len(wanted), MAX_PROOFS_PER_CALL):
            batch = wanted[start:start + MAX_PROOFS_PER_CALL]
            try:
                reply = self.ledger.GetInclusionProofs(pb.GetInclusionProofsRequest(
                    positions=batch, tree_size=tree_size), timeout=30)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                    raise refusal_from(exc) from None
                return proofs | {p: self.inclusion_proof(p, tree_size or self._tree_size())
                                 for p in wanted[start:]}
            tree_size = tree_size or reply.proofs[0].tree_size  # later batches: the same tree
            proofs |= {position: [bytes(h) for h in proof.path]
                       for position, proof in zip(batch, reply.proofs, strict=True)}
        return proofs

    def _tree_size(self) -> int:
        return parse_note(self.checkpoint()).checkpoint.tree_size

    def submit(self, workflow: WorkflowSource, *, idempotency_key: str | None = None) -> RunHandle:
        """Sign and submit a run of ``workflow``; the same ``idempotency_key`` names the same run."""
        command = submit_command(self.key, self.origin, workflow_of(workflow),
                                 idempotency_key or str(uuid.uuid4()))
        with _calls():
            reply = self.executor.SubmitWorkflow(pb.SubmitWorkflowRequest(
                command=pb.SignedEnvelope(envelope=command)), timeout=60)
        return RunHandle(self, str(reply.run.run_id))

    def run(self, run_id: str) -> RunHandle:
        return RunHandle(self, run_id)

    def runs(self, limit: int = 50, **filters: str) -> list[pb.Run]:
        """The most recent runs you may see; ``filters`` as ``ListRunsRequest`` names them
        (workflow, backend, dataset_sha256, submitted_by, since, until)."""
        with _calls():
            return list(self.executor.ListRuns(pb.ListRunsRequest(limit=limit, **filters), timeout=30).runs)


class RunHandle:
    """One run on the server."""

    def __init__(self, client: Client, run_id: str) -> None:
        self.client, self.id = client, run_id

    def __repr__(self) -> str:
        return f"RunHandle({self.id!r})"

    def info(self) -> pb.Run:
        with _calls():
            run: pb.Run = self.client.executor.GetRun(pb.GetRunRequest(run_id=self.id), timeout=30)
        return run

    @property
    def status(self) -> str:
        return str(self.info().status)

    def entries(self, progress: Progress | bool | None = None, timeout: float = 600) -> list[RecordedEntry]:
        """Every entry of the run, waiting until it has ended; ``progress`` hears of each step
        as it is recorded (``True``: a line on stderr)."""
        say = _progress(progress)
        found: list[RecordedEntry] = []
        deadline = time.monotonic() + timeout
        while True:
            after = len(found)
            with _calls():
                request = pb.WatchRunRequest(run_id=self.id, after_version=after)
                stream = self.client.executor.WatchRun(request, timeout=max(1.0, deadline - time.monotonic()))
                for message in stream:
                    content = EntryContent.from_bytes(dsse.parse(message.envelope).payload)
                    event = content.event_type.rsplit(".", 1)[-1]
                    found.append(RecordedEntry(int(message.position), event, content.payload,
                                               merkle.leaf_hash(message.envelope).hex()))
                    if say is not None:
                        say(f"{self.id[:8]} {event} {content.payload.get('step', '')}".rstrip())
            if found and found[-1].event in ("Completed", "Failed", "Cancelled"):
                return found
            if time.monotonic() >= deadline:  # a watch closes after its limit: resume it
                raise TimeoutError(f"run {self.id} did not end within {timeout} s")

    def result(self, progress: Progress | bool | None = None, timeout: float = 600) -> RunResult:
        """Wait for the run, then its results as Qiskit objects; ``RunFailedError`` if it failed
        or was cancelled."""
        entries = self.entries(progress, timeout)
        require_completed(self.id, entries)
        return run_result(self.id, "completed", entries, self.artifact)

    def artifact(self, sha256: str) -> bytes:
        """The bytes of an artifact the run's entries name."""
        with _calls():
            found: pb.Artifact = self.client.executor.GetArtifact(
                pb.GetArtifactRequest(run_id=self.id, sha256=sha256), timeout=60)
        return bytes(found.data)

    def cancel(self, reason: str = "cancelled by its submitter") -> str:
        command = cancel_command(self.client.key, self.client.origin, self.id, reason)
        with _calls():
            run = self.client.executor.CancelRun(pb.CancelRunRequest(command=pb.SignedEnvelope(
                envelope=command)), timeout=30)
        return str(run.status)

    def lineage(self) -> dict[str, Any]:
        """The run's W3C PROV lineage (PROV-JSON), derived from its entries."""
        with _calls():
            prov = self.client.ledger.GetLineage(pb.RunRef(run_id=self.id), timeout=60).prov_json
        return dict(json.loads(prov))

    def report(self, against: str | None = None) -> dict[str, Any]:
        """The reproducibility report (against another run, if named)."""
        with _calls():
            request = pb.GetReportRequest(run_id=self.id, against_run_id=against or "")
            text = self.client.ledger.GetReport(request, timeout=60).json
        return dict(json.loads(text))

    def bundle(self) -> bytes:
        """The run's signed lineage bundle (DSSE, in-toto Statement), for ``qledger verify-bundle``."""
        with _calls():
            return bytes(self.client.ledger.ExportBundle(pb.RunRef(run_id=self.id), timeout=60).envelope)


def require_completed(run_id: str, entries: list[RecordedEntry]) -> None:
    """``RunFailedError`` unless the run's last entry says it completed."""
    last = entries[-1]
    if last.event == "Completed":
        return
    said = last.payload
    parts = (said.get("error_class"), said.get("message") or said.get("reason"))
    detail = ": ".join(str(p) for p in parts if p)
    raise RunFailedError(f"run {run_id} {last.event.lower()}" + (f": {detail}" if detail else ""), run_id,
                         last.event.lower(), str(said.get("error_class", "")), str(said.get("step", "")),
                         str(said.get("kind", "")))


def _progress(progress: Progress | bool | None) -> Progress | None:
    if progress is True:
        return lambda line: print(line, file=sys.stderr, flush=True)
    return progress or None
