"""Qiskit's V2 primitives, run through a qledger server: every call becomes a signed, recorded
run, and its results come back shaped exactly as ``qiskit_aer.primitives`` gives them.

``LedgerSampler(client, backend="aer_ideal", seed=7).run([(circuit, values, shots)]).result()``
is a ``PrimitiveResult`` of ``SamplerPubResult`` (a ``BitArray`` per classical register) whose
metadata also carries ``qledger``: the run ids, the ledger positions of their entries, the signed
checkpoint they were proven against and an RFC 9162 inclusion proof of each entry.

Circuits travel as QPY; the server runs the PUBs of one circuit in one job of Aer's SamplerV2
with the call's seed, as ``SamplerV2(seed=...).run(pubs)`` does, so the results equal Aer's
bit for bit (circuits are transpiled at optimisation level 0, which keeps a circuit Aer can run
as it is).  A call whose PUBs hold several circuits becomes one run per circuit, each with the
call's seed: for each circuit the same as Aer's with that seed alone.
"""

from __future__ import annotations

import base64
import io
import json
import random
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from qiskit import QuantumCircuit, qpy
from qiskit.primitives import (
    BaseEstimatorV2,
    BaseSamplerV2,
    DataBin,
    PrimitiveResult,
    PubResult,
    SamplerPubResult,
)
from qiskit.primitives.base.base_primitive_job import BasePrimitiveJob
from qiskit.primitives.containers import BitArray
from qiskit.primitives.containers.estimator_pub import EstimatorPub, EstimatorPubLike
from qiskit.primitives.containers.sampler_pub import SamplerPub, SamplerPubLike
from qiskit.providers import JobStatus

from qledger.client.client import Client, RunHandle, require_completed
from qledger.client.results import RecordedEntry
from qledger.ledger import merkle
from qledger.runs.dag import linear_steps

MAX_SEED = 2**31


def _qpy(circuit: QuantumCircuit) -> str:
    buffer = io.BytesIO()
    qpy.dump(circuit, buffer)
    return base64.b64encode(buffer.getvalue()).decode()


def _single_job_workflow(name: str, circuit: QuantumCircuit, backend: str, seed: int, primitive: str,
                         pubs: list[dict[str, Any]], shots: int, project: str | None) -> dict[str, Any]:
    """A workflow that runs ``pubs`` over ``circuit`` in one Aer job with ``seed`` (QPY, and
    transpiled at level 0, which keeps a circuit Aer can run as it is)."""
    return {"schema_version": 1, "name": name, "version": 1, **({"project": project} if project else {}),
            "circuit": {"format": "qpy", "qpy": _qpy(circuit)},
            "transpile": {"optimization_level": 0, "seed_transpiler": 0},
            "execute": {"backend": backend, "shots": shots, "seed_simulator": seed,
                        "noise_seed": None, "fallback_backend": None, "priority": "normal",
                        "primitive": primitive, "pubs": pubs, "job": "single"},
            "quality": None, "datasets": None, "steps": linear_steps(hybrid=False)}


def sampler_workflow(circuit: QuantumCircuit, pubs: list[SamplerPub], backend: str, seed: int,
                     name: str = "ledger-sampler", project: str | None = None) -> dict[str, Any]:
    """The workflow that runs ``pubs`` (all over ``circuit``) in one Aer job with ``seed``."""
    members: list[dict[str, Any]] = []
    width = circuit.num_parameters
    for pub in pubs:
        # Bindings flattened in C order: the order Aer seeds them in, whatever the PUB's shape.
        values = (np.asarray(pub.parameter_values.as_array(circuit.parameters), dtype=float).reshape(
            -1, width).tolist() if width else [[]])
        members.append({"parameter_values": values, "shots": int(pub.shots or 0)})
    shots = int(pubs[0].shots or 0)  # the workflow's own member; each PUB states its shots
    return _single_job_workflow(name, circuit, backend, seed, "sampler", members, shots, project)


def estimator_workflow(circuit: QuantumCircuit, pubs: list[EstimatorPub], backend: str, seed: int,
                       name: str = "ledger-estimator", project: str | None = None) -> dict[str, Any]:
    """The workflow that runs ``pubs`` (all over ``circuit``) in one Aer Estimator job with
    ``seed``: each PUB broadcast as Aer broadcasts it and flattened in C order, the i-th
    observable paired with the i-th binding."""
    members = []
    width = circuit.num_parameters
    for pub in pubs:
        values = pub.parameter_values.as_array(circuit.parameters) if width else None
        indices = np.fromiter(np.ndindex(pub.parameter_values.shape), dtype=object).reshape(
            pub.parameter_values.shape)
        bound, observables = np.broadcast_arrays(indices, pub.observables)  # as Aer's EstimatorV2 does
        terms: Any = observables
        elements = list(np.ndindex(*bound.shape))
        members.append({
            "observables": [[[str(label), float(np.real(coeff))] for label, coeff in terms[i].items()]
                            for i in elements],
            "parameter_values": [[float(v) for v in values[bound[i]]] if values is not None else []
                                 for i in elements],
            "precision": float(pub.precision)})
    return _single_job_workflow(name, circuit, backend, seed, "estimator", members, 1, project)


class LedgerSampler(BaseSamplerV2):  # type: ignore[misc]  # Qiskit ships no type information
    """A ``BaseSamplerV2`` whose every ``run`` is recorded in a qledger ledger."""

    def __init__(self, client: Client, backend: str = "aer_ideal", *, seed: int | None = None,
                 default_shots: int = 1024, project: str | None = None) -> None:
        self.client, self.backend, self.project = client, backend, project
        # The ledger records the seed every run used: without one, a fresh one is drawn and kept.
        self.seed = seed if seed is not None else random.randrange(MAX_SEED)
        self.default_shots = default_shots

    def run(self, pubs: Iterable[SamplerPubLike], *, shots: int | None = None) -> LedgerJob:
        coerced = [SamplerPub.coerce(pub, shots if shots is not None else self.default_shots) for pub in pubs]
        runs = _submitted(self.client, coerced, lambda circuit, group: sampler_workflow(
            circuit, group, self.backend, self.seed, project=self.project))
        return LedgerJob(self.client, coerced, runs,
                         lambda pub, record, run: _sampler_result(pub, run.artifact(record["result_sha256"])))


class LedgerEstimator(BaseEstimatorV2):  # type: ignore[misc]  # Qiskit ships no type information
    """A ``BaseEstimatorV2`` whose every ``run`` is recorded in a qledger ledger; the results
    equal ``qiskit_aer.primitives.EstimatorV2(options={"default_precision": p, "run_options":
    {"seed_simulator": seed}})``'s, bit for bit (evs, and the noise a precision > 0 adds)."""

    def __init__(self, client: Client, backend: str = "aer_ideal", *, seed: int | None = None,
                 default_precision: float = 0.0, project: str | None = None) -> None:
        self.client, self.backend, self.project = client, backend, project
        self.seed = seed if seed is not None else random.randrange(MAX_SEED)
        self.default_precision = default_precision

    def run(self, pubs: Iterable[EstimatorPubLike], *, precision: float | None = None) -> LedgerJob:
        chosen = self.default_precision if precision is None else precision
        coerced = [EstimatorPub.coerce(pub, chosen) for pub in pubs]
        runs = _submitted(self.client, coerced, lambda circuit, group: estimator_workflow(
            circuit, group, self.backend, self.seed, project=self.project))
        return LedgerJob(self.client, coerced, runs, lambda pub, record, _: _estimator_result(pub, record))


Assemble = Callable[[Any, dict[str, Any], RunHandle], PubResult]


WorkflowFor = Callable[[QuantumCircuit, list[Any]], dict[str, Any]]


def _submitted(client: Client, pubs: list[Any], workflow_for: WorkflowFor
               ) -> list[tuple[RunHandle, list[int]]]:
    """One run per circuit among ``pubs`` (in the order the circuits first appear)."""
    groups: dict[int, list[int]] = {}  # the first PUB of each circuit -> that circuit's PUBs
    for index, pub in enumerate(pubs):
        first = next((g for g in groups if pubs[g].circuit is pub.circuit), index)
        groups.setdefault(first, []).append(index)
    return [(client.submit(workflow_for(pubs[first].circuit, [pubs[i] for i in members]),
                           idempotency_key=str(uuid.uuid4())), members) for first, members in groups.items()]


class LedgerJob(BasePrimitiveJob[PrimitiveResult[PubResult], JobStatus]):  # type: ignore[misc]
    """The runs one ``run`` call of a ledger primitive submitted; ``result()`` waits for them."""

    def __init__(self, client: Client, pubs: list[Any], runs: list[tuple[RunHandle, list[int]]],
                 assemble: Assemble) -> None:
        super().__init__(job_id=",".join(handle.id for handle, _ in runs))
        self.client, self.pubs, self.runs, self.assemble = client, pubs, runs, assemble
        self._result: PrimitiveResult[PubResult] | None = None

    def result(self) -> PrimitiveResult[PubResult]:
        if self._result is not None:
            return self._result
        results: list[PubResult | None] = [None] * len(self.pubs)
        recorded: list[tuple[RunHandle, list[RecordedEntry]]] = []
        for handle, members in self.runs:
            entries = handle.entries()
            require_completed(handle.id, entries)
            recorded.append((handle, entries))
            records = [e.payload.get("record") or {} for e in entries]
            by_pub = {int(r["pub"]): r for r in records if r.get("kind") == "pub_result"}
            for local, index in enumerate(members):
                results[index] = self.assemble(self.pubs[index], by_pub[local], handle)
        self._result = PrimitiveResult([r for r in results if r is not None],
                                       metadata={"version": 2, "qledger": self._provenance(recorded)})
        return self._result

    def _provenance(self, recorded: list[tuple[RunHandle, list[RecordedEntry]]]) -> dict[str, Any]:
        """Where each run is recorded, proven: every entry's inclusion in one signed checkpoint."""
        from qledger.ledger.checkpoint import parse_note

        note = self.client.checkpoint()
        size = parse_note(note).checkpoint.tree_size
        paths = self.client.inclusion_proofs([e.position for _, entries in recorded for e in entries], size)
        proofs = {position: [h.hex() for h in path] for position, path in paths.items()}
        return {"runs": [{"run_id": handle.id, "ledger_positions": [e.position for e in entries],
                          "leaf_hashes": [e.leaf_hash for e in entries]} for handle, entries in recorded],
                "checkpoint": note, "tree_size": size, "inclusion_proofs": proofs}

    def status(self) -> JobStatus:
        states = {handle.status for handle, _ in self.runs}
        if states <= {"completed"}:
            return JobStatus.DONE
        if "failed" in states:
            return JobStatus.ERROR
        if "cancelled" in states:
            return JobStatus.CANCELLED
        return JobStatus.RUNNING if "running" in states else JobStatus.QUEUED

    def done(self) -> bool:
        return bool(self.status() == JobStatus.DONE)

    def running(self) -> bool:
        return bool(self.status() == JobStatus.RUNNING)

    def cancelled(self) -> bool:
        return bool(self.status() == JobStatus.CANCELLED)

    def in_final_state(self) -> bool:
        return self.status() in (JobStatus.DONE, JobStatus.ERROR, JobStatus.CANCELLED)

    def cancel(self) -> None:
        for handle, _ in self.runs:
            handle.cancel("cancelled by its LedgerSampler job")


def _sampler_result(pub: SamplerPub, artifact: bytes) -> SamplerPubResult:
    data = json.loads(artifact)
    shape = pub.shape
    registers = {}
    for creg in pub.circuit.cregs:
        memory = data["memory"][creg.name]
        packed = np.frombuffer(base64.b64decode(memory["packed_base64"]), dtype=np.uint8)
        nbytes = -(-int(memory["num_bits"]) // 8)
        registers[creg.name] = BitArray(packed.reshape(*shape, int(pub.shots or 0), nbytes),
                                        int(memory["num_bits"]))
    return SamplerPubResult(DataBin(**registers, shape=shape),
                            metadata={"shots": pub.shots, "circuit_metadata": pub.circuit.metadata})


def _estimator_result(pub: EstimatorPub, record: dict[str, Any]) -> PubResult:
    shape = pub.shape
    evs = np.array(record["evs"], dtype=float).reshape(shape)
    stds = np.array(record["stds"], dtype=float).reshape(shape)
    return PubResult(DataBin(evs=evs, stds=stds, shape=shape),
                     metadata={"target_precision": pub.precision, "circuit_metadata": pub.circuit.metadata})


def verify_provenance(metadata: dict[str, Any]) -> bool:
    """Whether every entry named in a result's ``qledger`` metadata is included in its checkpoint
    (the checkpoint's signature is the caller's to check against the pinned checkpoint key)."""
    from qledger.ledger.checkpoint import parse_note

    checkpoint = parse_note(metadata["checkpoint"]).checkpoint
    return all(merkle.verify_inclusion(position - 1, checkpoint.tree_size, bytes.fromhex(leaf),
                                       [bytes.fromhex(h) for h in metadata["inclusion_proofs"][position]],
                                       checkpoint.root_hash)
               for run in metadata["runs"] for position, leaf in zip(run["ledger_positions"],
                                                                     run["leaf_hashes"], strict=True))
