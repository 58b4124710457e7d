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
import random
import uuid
from collections.abc import Iterable
from typing import Any

import numpy as np
from qiskit import QuantumCircuit, qpy
from qiskit.primitives import BaseSamplerV2, DataBin, PrimitiveResult, SamplerPubResult
from qiskit.primitives.base.base_primitive_job import BasePrimitiveJob
from qiskit.primitives.containers import BitArray
from qiskit.primitives.containers.sampler_pub import SamplerPub, SamplerPubLike
from qiskit.providers import JobStatus

from qledger.api import qledger_pb2 as pb
from qledger.client.client import Client, RunHandle, _calls, require_completed
from qledger.client.results import RecordedEntry
from qledger.ledger import merkle

STEPS = ("data_preparation", "circuit_synthesis", "transpilation", "execution", "post_processing", "report")
MAX_SEED = 2**31


def _qpy(circuit: QuantumCircuit) -> str:
    buffer = io.BytesIO()
    qpy.dump(circuit, buffer)
    return base64.b64encode(buffer.getvalue()).decode()


def sampler_workflow(circuit: QuantumCircuit, pubs: list[SamplerPub], backend: str, seed: int,
                     name: str = "ledger-sampler", project: str | None = None) -> dict[str, Any]:
    """The workflow that runs ``pubs`` (all over ``circuit``) in one Aer job with ``seed``."""
    members = []
    width = circuit.num_parameters
    for pub in pubs:
        # Bindings flattened in C order: the order Aer seeds them in, whatever the PUB's shape.
        values = (np.asarray(pub.parameter_values.as_array(circuit.parameters), dtype=float).reshape(
            -1, width).tolist() if width else [[]])
        members.append({"parameter_values": values, "shots": int(pub.shots or 0)})
    steps = [{"id": s, "kind": s, "needs": [STEPS[i - 1]] if i else []} for i, s in enumerate(STEPS)]
    return {"schema_version": 1, "name": name, "version": 1, **({"project": project} if project else {}),
            "circuit": {"format": "qpy", "qpy": _qpy(circuit)},
            "transpile": {"optimization_level": 0, "seed_transpiler": 0},
            "execute": {"backend": backend, "shots": members[0]["shots"], "seed_simulator": seed,
                        "noise_seed": None, "fallback_backend": None, "priority": "normal",
                        "primitive": "sampler", "pubs": members, "job": "single"},
            "quality": None, "datasets": None, "steps": steps}


class LedgerSampler(BaseSamplerV2):
    """A ``BaseSamplerV2`` whose every ``run`` is recorded in a qledger ledger."""

    def __init__(self, client: Client, backend: str = "aer_ideal", *, seed: int | None = None,
                 default_shots: int = 1024, project: str | None = None) -> None:
        self.client, self.backend, self.project = client, backend, project
        # The ledger records the seed every run used: without one, a fresh one is drawn and kept.
        self.seed = seed if seed is not None else random.randrange(MAX_SEED)
        self.default_shots = default_shots

    def run(self, pubs: Iterable[SamplerPubLike], *, shots: int | None = None) -> LedgerJob:
        coerced = [SamplerPub.coerce(pub, shots if shots is not None else self.default_shots) for pub in pubs]
        groups: dict[int, list[int]] = {}  # the first PUB of each circuit -> that circuit's PUBs
        for index, pub in enumerate(coerced):
            first = next((g for g in groups if coerced[g].circuit is pub.circuit), index)
            groups.setdefault(first, []).append(index)
        runs = []
        for first, members in groups.items():
            circuit = coerced[first].circuit
            workflow = sampler_workflow(circuit, [coerced[i] for i in members], self.backend, self.seed,
                                        project=self.project)
            runs.append((self.client.submit(workflow, idempotency_key=str(uuid.uuid4())), members))
        return LedgerJob(self.client, coerced, runs)


class LedgerJob(BasePrimitiveJob[PrimitiveResult[SamplerPubResult], JobStatus]):
    """The runs one ``LedgerSampler.run`` call submitted; ``result()`` waits for them."""

    def __init__(self, client: Client, pubs: list[SamplerPub],
                 runs: list[tuple[RunHandle, list[int]]]) -> None:
        super().__init__(job_id=",".join(handle.id for handle, _ in runs))
        self.client, self.pubs, self.runs = client, pubs, runs
        self._result: PrimitiveResult[SamplerPubResult] | None = None

    def result(self) -> PrimitiveResult[SamplerPubResult]:
        if self._result is not None:
            return self._result
        results: list[SamplerPubResult | None] = [None] * len(self.pubs)
        recorded: list[tuple[RunHandle, list[RecordedEntry]]] = []
        for handle, members in self.runs:
            entries = handle.entries()
            require_completed(handle.id, entries)
            recorded.append((handle, entries))
            records = [e.payload.get("record") or {} for e in entries]
            by_pub = {int(r["pub"]): r for r in records if r.get("kind") == "pub_result"}
            for local, index in enumerate(members):
                artifact = handle.artifact(by_pub[local]["result_sha256"])
                results[index] = _pub_result(self.pubs[index], artifact)
        self._result = PrimitiveResult([r for r in results if r is not None],
                                       metadata={"version": 2, "qledger": self._provenance(recorded)})
        return self._result

    def _provenance(self, recorded: list[tuple[RunHandle, list[RecordedEntry]]]) -> dict[str, Any]:
        """Where each run is recorded, proven: every entry's inclusion in one signed checkpoint."""
        from qledger.ledger.checkpoint import parse_note

        note = self.client.checkpoint()
        size = parse_note(note).checkpoint.tree_size
        proofs: dict[int, list[str]] = {}
        with _calls():
            for _, entries in recorded:
                for entry in entries:
                    proof = self.client.ledger.GetInclusionProof(pb.GetInclusionProofRequest(
                        position=entry.position, tree_size=size), timeout=30)
                    proofs[entry.position] = [bytes(h).hex() for h in proof.path]
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
        return self.status() == JobStatus.DONE

    def running(self) -> bool:
        return self.status() == JobStatus.RUNNING

    def cancelled(self) -> bool:
        return self.status() == JobStatus.CANCELLED

    def in_final_state(self) -> bool:
        return self.status() in (JobStatus.DONE, JobStatus.ERROR, JobStatus.CANCELLED)

    def cancel(self) -> None:
        for handle, _ in self.runs:
            handle.cancel("cancelled by its LedgerSampler job")


def _pub_result(pub: SamplerPub, artifact: bytes) -> SamplerPubResult:
    import json

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
