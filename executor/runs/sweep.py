"""A sweep shared by every executor on one store.

The executor that holds a run's lease coordinates: it publishes the sweep's chunks
(``SweepItems``), computes the next chunk it has to record unless another executor holds it,
and records every chunk's results in order in the run's stream, so the ledger has each chunk
exactly once whoever computed it.  An idle executor (``SweepHelper``) takes free chunks from
the end of the oldest sweep, re-transpiles the run's circuit (deterministic from the recorded
seed) and refuses to compute unless it gets the very circuit the coordinator transpiled.  Results
travel as artifacts by digest, stored before a chunk is marked done: a coordinator that takes a
run over after a crash finds the chunks already computed and records them without computing
them again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from typing import Any, cast
from uuid import UUID

from qiskit import QuantumCircuit

from qledger.ledger.app import LedgerApp
from qledger.ledger.artifacts import ArtifactStore
from qledger.ledger.canonical import canonical_bytes
from qledger.runs.backends import Backend, BackendCatalog
from qledger.runs.circuit_source import load_circuit
from qledger.runs.circuits import sha256_text
from qledger.runs.pipeline import transpiled_for
from qledger.runs.pubs import Pub, parse_pubs
from qledger.runs.queue import SweepItem, SweepItems
from qledger.runs.run import Run
from qledger.runs.templates import resolver
from qledger.runs.workflow import parse_workflow

log = logging.getLogger("qledger.executor")
RESULT_MEDIA_TYPE = "application/json"


def _stored(artifacts: ArtifactStore, data: dict[str, Any]) -> str:
    return str(artifacts.put(canonical_bytes(data), RESULT_MEDIA_TYPE)["sha256"])


class SharedSweep:
    """The coordinating executor's view of one run's sweep (``pipeline.SharedChunks``)."""

    def __init__(self, items: SweepItems, artifacts: ArtifactStore, run_id: UUID, worker: str,
                 lease_seconds: float, keep_alive: Callable[[], None], poll_seconds: float = 0.05) -> None:
        self.items, self.artifacts, self.run_id, self.worker = items, artifacts, run_id, worker
        self.lease, self.keep_alive, self.poll = lease_seconds, keep_alive, poll_seconds

    def publish(self, chunks: list[tuple[int, int, int, int]], backend: str, noise_seed: int | None,
                circuit_sha256: str) -> None:
        self.items.publish([SweepItem(self.run_id, pub, start, stop, seed, backend, noise_seed,
                                      circuit_sha256) for pub, start, stop, seed in chunks])

    def obtain(self, pub: int, start: int, compute: Callable[[], dict[str, Any]]
               ) -> tuple[dict[str, Any], dict[str, Any]]:
        while True:
            # Claiming first saves a round trip in the common case: nobody else has the chunk.
            if self.items.claim(self.run_id, pub, start, self.worker, self.lease):
                return self._computed(pub, start, compute)
            state = self.items.state(self.run_id, pub, start)
            if state is None:  # never published (a store without the table): compute here
                return compute(), {}
            if state.done and state.result_sha256:
                data = self.artifacts.get(state.result_sha256)
                if data is not None and hashlib.sha256(data).hexdigest() == state.result_sha256:
                    facts = {"computed_by": state.computed_by, "execute_ms": state.execute_ms, "stored": True}
                    return json.loads(data), facts
                log.warning("run %s: the result of chunk %d/%d is missing; computing it again",
                            self.run_id, pub, start)
            if state.done:
                return self._computed(pub, start, compute)
            self.keep_alive()  # another executor is computing this chunk: wait for it
            time.sleep(self.poll)

    def _computed(self, pub: int, start: int, compute: Callable[[], dict[str, Any]]
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
        t0 = time.perf_counter()
        result = compute()
        execute_ms = round(1000 * (time.perf_counter() - t0), 3)
        sha = _stored(self.artifacts, result)
        self.items.complete(self.run_id, pub, start, self.worker, sha, execute_ms)
        return result, {"computed_by": self.worker, "execute_ms": execute_ms, "stored": True}


class SweepHelper:
    """What an executor with no run to claim does: compute free chunks of others' sweeps."""

    def __init__(self, app: LedgerApp, items: SweepItems, artifacts: ArtifactStore, catalog: BackendCatalog,
                 worker: str, lease_seconds: float = 30.0) -> None:
        self.app, self.items, self.artifacts, self.catalog = app, items, artifacts, catalog
        self.worker, self.lease = worker, lease_seconds
        self._prepared: OrderedDict[tuple[UUID, str], tuple[Backend, QuantumCircuit, str, tuple[Pub, ...]]]
        self._prepared = OrderedDict()

    def help_once(self) -> bool:
        """Compute one free chunk, if there is one; whether there was."""
        item = self.items.claim_any(self.worker, self.lease)
        if item is None:
            return False
        try:
            backend, circuit, circuit_sha256, pubs = self._prepare(item)
            if circuit_sha256 != item.circuit_sha256:
                raise ValueError(f"transpiled here to {circuit_sha256[:12]}, not {item.circuit_sha256[:12]}")
            t0 = time.perf_counter()
            result = backend.run_pub_chunk(circuit, pubs[item.pub], item.start, item.stop, item.seed)
            execute_ms = round(1000 * (time.perf_counter() - t0), 3)
            sha = _stored(self.artifacts, result)
            self.items.complete(item.run_id, item.pub, item.start, self.worker, sha, execute_ms)
        except Exception:  # the run's own executor computes it instead, and records any failure
            log.exception("run %s: chunk %d/%d not computed here", item.run_id, item.pub, item.start)
            self.items.release(item.run_id, item.pub, item.start, self.worker)
        return True

    def _prepare(self, item: SweepItem) -> tuple[Backend, QuantumCircuit, str, tuple[Pub, ...]]:
        key = (item.run_id, item.backend)
        if key not in self._prepared:
            run = cast(Run, self.app.repository.get(item.run_id))
            spec = replace(parse_workflow(run.workflow, self.catalog.names(), resolver(self.app)),
                           backend=item.backend,
                           noise_seed=item.noise_seed)
            assert spec.source is not None and spec.primitive is not None
            loaded = load_circuit(spec.source, spec.primitive)
            transpiled, qasm, _ = transpiled_for(spec, self.catalog, loaded.circuit)
            pubs = parse_pubs(spec.primitive, list(spec.pubs or ()), loaded.parameters, spec.qubits)
            backend = self.catalog.get(spec.backend, spec.qubits, spec.noise_seed)
            self._prepared[key] = (backend, transpiled, sha256_text(qasm), pubs)
            while len(self._prepared) > 4:  # a few sweeps at once at most; circuits can be large
                self._prepared.popitem(last=False)
        return self._prepared[key]
