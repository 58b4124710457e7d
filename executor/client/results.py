"""A run's results as Qiskit objects: counts as ``Counts``, each PUB as Qiskit's own
``SamplerPubResult`` (a ``BitArray`` per classical register) or ``PubResult`` (``evs``,
``stds``), built from what the run's entries record and the artifacts they name."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from qiskit.primitives import DataBin, PubResult, SamplerPubResult
from qiskit.primitives.containers import BitArray
from qiskit.result import Counts


@dataclass(frozen=True)
class RecordedEntry:
    """One entry of a run as a client reads it: where it is and what it says."""

    position: int
    event: str  # StepRecorded, Completed, Failed, Cancelled, Submitted
    payload: dict[str, Any]
    leaf_hash: str = ""  # hex RFC 9162 leaf hash of the entry's envelope, what proofs start from


@dataclass
class RunResult:
    """What a finished run produced, and where each part of it is recorded."""

    run_id: str
    status: str
    entries: list[RecordedEntry] = field(default_factory=list)
    counts: Counts | None = None  # a one-circuit Sampler run
    energy: float | None = None  # a variational eigensolver
    pubs: list[PubResult] = field(default_factory=list)

    @property
    def positions(self) -> list[int]:
        """The ledger positions of the run's entries, in stream order."""
        return [e.position for e in self.entries]


def run_result(run_id: str, status: str, entries: Sequence[RecordedEntry],
               fetch: Callable[[str], bytes]) -> RunResult:
    """The result of a run from its entries; ``fetch`` gives an artifact's bytes by digest."""
    result = RunResult(run_id, status, list(entries))
    chunks: dict[int, list[dict[str, Any]]] = {}
    for entry in entries:
        record = entry.payload.get("record") or {}
        if record.get("kind") == "execution":
            if "counts" in record:
                result.counts = Counts(record["counts"])
            if "energy" in record:
                result.energy = float(record["energy"])
        elif record.get("kind") == "pub_result":
            chunks.setdefault(int(record["pub"]), []).append(record)
    for index in sorted(chunks):
        result.pubs.append(_pub_result(sorted(chunks[index], key=lambda r: r["bindings"][0]), fetch))
    return result


def _pub_result(chunks: list[dict[str, Any]], fetch: Callable[[str], bytes]) -> PubResult:
    metadata = {"bindings": sum(c["bindings"][1] - c["bindings"][0] for c in chunks),
                "result_sha256": [c["result_sha256"] for c in chunks]}
    if "evs" in chunks[0]:
        evs = np.array([v for c in chunks for v in c["evs"]], dtype=float)
        stds = np.array([v for c in chunks for v in c["stds"]], dtype=float)
        return PubResult(DataBin(evs=evs, stds=stds, shape=evs.shape),
                         metadata={**metadata, "target_precision": chunks[0].get("precision")})
    counts = [binding for c in chunks for binding in json.loads(fetch(c["result_sha256"]))["counts"]]
    registers = sorted(counts[0]) if counts else []
    bits = {name: BitArray.from_counts([b[name] for b in counts], num_bits=_width(counts, name))
            for name in registers}
    return SamplerPubResult(DataBin(**bits, shape=(len(counts),)),
                            metadata={**metadata, "shots": chunks[0].get("shots")})


def _width(counts: list[dict[str, dict[str, int]]], register: str) -> int:
    return len(next(iter(counts[0][register])))
