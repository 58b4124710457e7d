"""A run's steps, in order, each yielding the record the ledger keeps of it.

Execution is where failures are classified: a deterministic failure (the circuit or the
settings are wrong) fails the run at once; an environmental one (backend down, timeout,
quota) is retried with exponential backoff and jitter (tenacity), then the run fails
over to the workflow's fallback backend.  A backend whose breaker is open is not called;
a low-priority run is routed to the ideal simulator instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

import numpy as np
from qiskit import QuantumCircuit, qasm3, transpile
from qiskit.quantum_info import Statevector
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from qledger.ledger.artifacts import ArtifactStore
from qledger.ledger.canonical import canonical_bytes
from qledger.ledger.content import artifact_ref
from qledger.ops.tracing import step_span
from qledger.runs.backends import (
    Backend,
    BackendCatalog,
    BackendError,
    BreakerOpenError,
    DeviceModelBackend,
    StaleCalibrationError,
)
from qledger.runs.breaker import BreakerBoard, Transition
from qledger.runs.circuit_source import CircuitError, load_circuit
from qledger.runs.circuits import EXACT_MAX_QUBITS, environment, ideal_distribution, sha256_text, synthesise
from qledger.runs.dag import PYTHON, Step, order_of
from qledger.runs.pubs import Pub, parse_pubs, sparse_pauli_op
from qledger.runs.python_steps import PythonStepError, StepPolicy, run_step
from qledger.runs.qaoa import brute_force_maxcut, cut_value, expected_cut, qaoa_circuit
from qledger.runs.variational import SPSA_SHAPE, exact_ground_energy, minimise
from qledger.runs.workflow import WorkflowError, WorkflowSpec

StepRecord = tuple[str, dict[str, Any]]
T = TypeVar("T")
SIMULATOR = "aer_ideal"
EXACT_DIAGONALISATION_MAX_QUBITS = 10  # a dense 1024 x 1024 Hermitian matrix
QASM3 = "text/x-openqasm3"


class StepFailedError(Exception):
    """A step failed for good; ``diagnostics`` is what a person needs to find out why."""

    def __init__(self, cause: BaseException, kind: str, diagnostics: dict[str, Any]) -> None:
        super().__init__(str(cause))
        self.cause, self.kind, self.diagnostics = cause, kind, diagnostics
        self.step = ""  # the id of the step that failed, filled in by run_steps


@dataclass
class RetryPolicy:
    attempts: int = 4
    initial_wait: float = 0.05
    max_wait: float = 1.0


@dataclass
class ExecutionContext:
    catalog: BackendCatalog
    breakers: BreakerBoard
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    on_breaker: Callable[[Transition], None] = lambda transition: None
    # Where circuits and full counts go, by digest; None keeps only their digests.
    artifacts: ArtifactStore | None = None
    # Told the age of the oldest calibration parameter a run on a device model depends on.
    on_calibration: Callable[[str, float], None] = lambda backend, age: None
    # Which python steps of installed code may run, and their time and memory limits.
    steps: StepPolicy = field(default_factory=StepPolicy)

    def keep(self, data: bytes, media_type: str) -> dict[str, Any]:
        if self.artifacts is None:
            return artifact_ref(data, media_type)
        return self.artifacts.put(data, media_type)


class SharedChunks(Protocol):
    """Where the chunks of one run's sweep are computed when several executors share the work
    (``runs.sweep``): each chunk's results come back in the order the run records them."""

    def publish(self, chunks: list[tuple[int, int, int, int]], backend: str, noise_seed: int | None,
                circuit_sha256: str) -> None:
        """Offer the chunks (PUB, first binding, end, seed) of the transpiled circuit to all."""

    def obtain(self, pub: int, start: int, compute: Callable[[], dict[str, Any]]
               ) -> tuple[dict[str, Any], dict[str, Any]]:
        """This chunk's results, computed here by ``compute`` unless another executor has (or
        is); and facts about who computed it."""


def _retryable(error: BaseException) -> bool:
    return (isinstance(error, BackendError) and error.kind == "environmental"
            and not isinstance(error, BreakerOpenError))


def _call(ctx: ExecutionContext, backend: Backend, circuit: QuantumCircuit, spec: WorkflowSpec,
          attempts: list[dict[str, Any]]) -> dict[str, int]:
    return _guarded(ctx, backend, lambda: backend.run(circuit, spec.shots, spec.seed_simulator), attempts)


def _guarded(ctx: ExecutionContext, backend: Backend, action: Callable[[], T],
             attempts: list[dict[str, Any]]) -> T:
    """``action`` on ``backend`` through its breaker, retried with backoff while the failure
    is environmental; every failed attempt is added to ``attempts``."""
    breaker = ctx.breakers[backend.name]
    for attempt in Retrying(stop=stop_after_attempt(ctx.retry.attempts),
                            wait=wait_exponential_jitter(multiplier=ctx.retry.initial_wait,
                                                         max=ctx.retry.max_wait),
                            retry=retry_if_exception(_retryable), reraise=True):
        with attempt:
            allowed, transition = breaker.before_call()
            if transition:
                ctx.on_breaker(transition)
            if not allowed:
                raise BreakerOpenError(f"circuit breaker for {backend.name} is open")
            try:
                outcome = action()
            except BackendError as exc:
                attempts.append({"backend": backend.name, "error_class": type(exc).__name__,
                                 "message": str(exc)})
                if exc.kind == "environmental" and (transition := breaker.failure(str(exc))):
                    ctx.on_breaker(transition)
                raise
            if transition := breaker.success():
                ctx.on_breaker(transition)
            return outcome
    raise AssertionError("tenacity either returns or re-raises")


def execute(ctx: ExecutionContext, spec: WorkflowSpec, circuit: QuantumCircuit
            ) -> tuple[dict[str, int], dict[str, Any]]:
    requested = spec.backend
    routed = None
    if spec.priority == "low" and requested != SIMULATOR and ctx.breakers[requested].is_open():
        routed = f"breaker for {requested} is open; low-priority run routed to {SIMULATOR}"
        requested = SIMULATOR
    candidates = [requested] + ([spec.fallback_backend] if spec.fallback_backend
                                and spec.fallback_backend != requested else [])
    attempts: list[dict[str, Any]] = []
    last: BackendError | None = None
    for name in candidates:
        backend = ctx.catalog.get(name, spec.qubits, spec.noise_seed)
        try:
            counts = _call(ctx, backend, circuit, spec, attempts)
        except BackendError as exc:
            last = exc
            if exc.kind == "deterministic":
                break
            continue
        return counts, {"backend": backend.describe(), "requested_backend": spec.backend,
                        "routed": routed, "failover": name != requested, "attempts": attempts}
    assert last is not None
    raise StepFailedError(last, last.kind, {"attempts": attempts, "candidates": candidates})


def run_steps(spec: WorkflowSpec, ctx: ExecutionContext, shared: SharedChunks | None = None
              ) -> Iterator[StepRecord]:
    """Run the declared steps in topological order; each yields (step id, record).  With
    ``shared``, the chunks of a sweep are computed by whichever executors are free."""
    state = _RunState(spec, ctx, shared)
    for step in order_of(spec.steps):
        if step.kind == PYTHON:
            with step_span(step.id, **{"qledger.kind": step.kind, "qledger.workflow": spec.name}):
                try:
                    record = _python_step(state, step)
                except StepFailedError as failure:
                    failure.step = step.id
                    raise
            yield step.id, {"kind": step.kind, **record}
            continue
        if step.kind == "execution" and spec.pubs is not None:
            try:
                yield from _pub_results(state, step.id)
            except StepFailedError as failure:
                failure.step = step.id
                raise
        with step_span(step.id, **{"qledger.kind": step.kind, "qledger.workflow": spec.name}) as span:
            try:
                record = STAGES[step.kind](state)
            except StepFailedError as failure:
                failure.step = step.id
                raise
            for name, value in _span_facts(record).items():
                span.set_attribute(name, value)
        yield step.id, {"kind": step.kind, **record}


def _span_facts(record: dict[str, Any]) -> dict[str, str]:
    """What a trace shows of a step: its backend, the SDK versions, the datasets' hashes."""
    facts = {}
    if isinstance(record.get("backend"), dict):
        facts["qledger.backend"] = str(record["backend"].get("name"))
    if isinstance(record.get("environment"), dict):
        facts["qledger.sdk"] = ", ".join(f"{k} {v}" for k, v in sorted(record["environment"].items())
                                         if isinstance(v, str))
    for name, dataset in sorted(record.get("datasets", {}).items()):
        facts[f"qledger.dataset.{name}.sha256"] = str(dataset["sha256"])
    return facts


class _RunState:
    """What steps hand to later steps: the circuit, its transpiled form, parameters, counts."""

    def __init__(self, spec: WorkflowSpec, ctx: ExecutionContext, shared: SharedChunks | None = None
                 ) -> None:
        self.spec, self.ctx, self.shared = spec, ctx, shared
        self.circuit: QuantumCircuit | None = None
        self.transpiled: QuantumCircuit | None = None
        self.qasm = ""
        self.parameters: list[float] = []
        self.counts: dict[str, int] = {}
        self.derived: dict[str, Any] = {}
        self.calibration: dict[str, Any] | None = None
        self.pub_results: list[tuple[Pub, int, dict[str, Any]]] = []  # (PUB, first binding, results)
        self.outputs: dict[str, Any] = {}  # python step id -> its output

    def evaluate(self, circuit: QuantumCircuit, spec: WorkflowSpec | None = None
                 ) -> tuple[dict[str, int], dict[str, Any]]:
        try:
            return execute(self.ctx, spec or self.spec, circuit)
        except StepFailedError as failure:
            failure.diagnostics.update({"circuit_qasm3": self.qasm, "settings": self.spec.to_json(),
                                        "parameters": self.parameters})
            raise


def _data_preparation(st: _RunState) -> dict[str, Any]:
    datasets = st.spec.datasets or {}
    return {"datasets": {name: {"sha256": sha256_text(canonical_bytes(content).decode()),
                                "bytes": len(canonical_bytes(content))}
                         for name, content in sorted(datasets.items())}}


def _circuit_synthesis(st: _RunState) -> dict[str, Any]:
    spec = st.spec
    if spec.source is not None:
        return _circuit_loading(st, spec.source)
    if spec.template == "qaoa_maxcut":
        st.circuit = qaoa_circuit(spec.qubits, spec.graph, spec.layers)
        extra: dict[str, Any] = {"graph_dataset": spec.graph_dataset, "layers": spec.layers}
    else:
        st.circuit = synthesise(spec.template, spec.qubits)
        extra = {}
    qasm = qasm3.dumps(st.circuit)
    return {"template": spec.template, "qubits": spec.qubits, **extra, "qasm3_sha256": sha256_text(qasm),
            "artifacts": {"circuit_qasm3": st.ctx.keep(qasm.encode(), QASM3)}}


def _circuit_loading(st: _RunState, source: dict[str, Any]) -> dict[str, Any]:
    """A circuit the user brought: its source bytes are the artifact, by digest."""
    loaded = load_circuit(source, st.spec.primitive)
    st.circuit = loaded.circuit
    qasm = qasm3.dumps(st.circuit)
    template = st.spec.template_source
    registered = ({"template": {"ref": template.ref, "sha256": template.sha256, "author": template.author}}
                  if template is not None else {})
    return {**registered, "source_format": source["format"], "qubits": st.circuit.num_qubits,
            "clbits": st.circuit.num_clbits, "parameters": source.get("parameters") or {},
            "circuit_source": {"sha256": loaded.sha256, "media_type": loaded.media_type,
                               "bytes": len(loaded.data)},
            "qasm3_sha256": sha256_text(qasm),
            "artifacts": {"circuit_source": st.ctx.keep(loaded.data, loaded.media_type),
                          "circuit_qasm3": st.ctx.keep(qasm.encode(), QASM3)}}


def _transpilation(st: _RunState) -> dict[str, Any]:
    assert st.circuit is not None
    st.transpiled, st.qasm, record = transpiled_for(st.spec, st.ctx.catalog, st.circuit)
    return {**record, "artifacts": {"transpiled_qasm3": st.ctx.keep(st.qasm.encode(), QASM3)}}


def _hybrid_optimisation(st: _RunState) -> dict[str, Any]:
    """The hybrid loop: the stated optimiser proposes parameters and each proposal is one
    circuit evaluation, recorded.  QAOA maximises the expected cut of sampled bitstrings; a
    variational eigensolver minimises the Estimator's expectation value of its observable."""
    spec, transpiled = st.spec, st.transpiled
    assert spec.optimizer is not None and transpiled is not None
    objective: Callable[[list[float]], float]
    sampled = [0]  # shots the loop's Sampler evaluations took (the Estimator's take none)
    if spec.template == "qaoa_maxcut":
        def objective(parameters: list[float]) -> float:
            st.parameters = parameters
            counts, _ = st.evaluate(transpiled.assign_parameters(parameters))
            sampled[0] += spec.shots
            return -expected_cut(counts, spec.graph)

        def describe(value: float) -> dict[str, Any]:
            return {"expected_cut": round(-value, 12)}
    else:
        evaluations = iter(range(1, 1 + int(spec.optimizer["maxiter"])))

        def objective(parameters: list[float]) -> float:
            st.parameters = parameters
            evs, _ = _estimate(st, parameters, spec.seed_simulator + next(evaluations))
            return evs

        def describe(value: float) -> dict[str, Any]:
            return {}
    t0 = time.perf_counter()
    result = minimise(objective, spec.optimizer, describe)
    st.parameters = result.best_parameters
    method = {"spsa_shape": SPSA_SHAPE} if spec.optimizer["method"] == "SPSA" else {}
    return {"optimizer": spec.optimizer, **method, "evaluations": len(result.iterations),
            "iterations": result.iterations, "stopped": result.stopped,
            "best_parameters": st.parameters, "best_value": result.best_value, "shots_taken": sampled[0],
            "optimise_ms": round(1000 * (time.perf_counter() - t0), 3)}


def _estimate(st: _RunState, parameters: list[float], seed: int) -> tuple[float, float]:
    """<observable> and its standard error at ``parameters``, on the Estimator of the backend."""
    spec, transpiled = st.spec, st.transpiled
    assert transpiled is not None and spec.precision is not None
    pub = Pub(0, np.array([parameters], dtype=float), observables=(spec.observable,),
              precision=spec.precision)
    backend = st.ctx.catalog.get(spec.backend, spec.qubits, spec.noise_seed)
    attempts: list[dict[str, Any]] = []
    try:
        data = _guarded(st.ctx, backend, lambda: backend.run_pub_chunk(transpiled, pub, 0, 1, seed), attempts)
    except BackendError as exc:
        raise StepFailedError(exc, exc.kind, {"attempts": attempts, "parameters": parameters,
                                              "settings": spec.to_json()}) from exc
    return float(data["evs"][0][0]), float(data["stds"][0][0])


def _calibration(st: _RunState, circuit: QuantumCircuit) -> dict[str, Any] | None:
    """The calibration snapshot a run on a device model depends on, checked for age first."""
    spec = st.spec
    backend = st.ctx.catalog.get(spec.backend, spec.qubits, spec.noise_seed)
    if not isinstance(backend, DeviceModelBackend):
        return None
    used = {circuit.find_bit(q).index for instruction in circuit.data for q in instruction.qubits}
    record = backend.snapshot.record(used, st.ctx.keep(backend.snapshot.data, "application/json"))
    if record["max_age_seconds"] is not None:
        st.ctx.on_calibration(spec.backend, float(record["max_age_seconds"]))
    if (spec.max_calibration_age is not None and record["max_age_seconds"] is not None
            and record["max_age_seconds"] > spec.max_calibration_age):
        stale = StaleCalibrationError(
            f"the calibration of {backend.snapshot.backend} is {record['max_age_seconds']:.0f} s old "
            f"(last update {backend.snapshot.last_update_date}); the workflow allows "
            f"{spec.max_calibration_age:g} s")
        raise StepFailedError(stale, stale.kind, {"calibration": record})
    return record


def _pub_results(st: _RunState, step: str) -> Iterator[StepRecord]:
    """Each chunk of each PUB's bindings, run on Aer's V2 primitive and recorded with its results
    as an artifact; the calibration of a device model is checked (and recorded) first."""
    spec, transpiled = st.spec, st.transpiled
    assert transpiled is not None and spec.source is not None and spec.primitive is not None
    parameters = load_circuit(spec.source, spec.primitive).parameters
    st.calibration = _calibration(st, transpiled)
    backend = st.ctx.catalog.get(spec.backend, spec.qubits, spec.noise_seed)
    try:
        pubs = parse_pubs(spec.primitive, _resolved_pubs(st), parameters, spec.qubits,
                          paired=spec.job == "single")
    except CircuitError as exc:  # values a python step gave, checked as a definition's are
        raise StepFailedError(WorkflowError(exc.field, exc.description), "deterministic", {}) from exc
    if spec.job == "single":
        yield from _single_job(st, step, backend, transpiled, pubs)
        return
    if st.shared is not None:
        st.shared.publish([(pub.index, start, stop, chunk_seed(spec, pub.index, start))
                           for pub in pubs for start, stop in pub.chunks()],
                          spec.backend, spec.noise_seed, sha256_text(st.qasm))
    for pub in pubs:
        for start, stop in pub.chunks():
            seed = chunk_seed(spec, pub.index, start)
            compute = _chunk_computation(st.ctx, backend, transpiled, pub, (start, stop), seed)
            t0 = time.perf_counter()
            data, facts = st.shared.obtain(pub.index, start, compute) if st.shared else (compute(), {})
            blob = canonical_bytes(data)
            # A shared sweep has stored the result already; the entry only names it.
            ref = artifact_ref(blob, "application/json") if facts.get("stored") else st.ctx.keep(
                blob, "application/json")
            st.pub_results.append((pub, start, data))
            record: dict[str, Any] = {
                "kind": "pub_result", "primitive": spec.primitive, "pub": pub.index,
                "bindings": [start, stop], "seed_simulator": seed, "result_sha256": ref["sha256"],
                "artifacts": {"result": ref},
                "execute_ms": facts.get("execute_ms") or round(1000 * (time.perf_counter() - t0), 3),
                **({"computed_by": facts["computed_by"]} if facts.get("computed_by") else {})}
            if pub.shots is not None:
                record |= {"shots": pub.shots, "shots_taken": pub.shots * (stop - start)}
            else:  # expectation values are small: they stand in the entry itself
                record |= {"precision": pub.precision, "evs": data["evs"], "stds": data["stds"]}
            yield f"{step}/pub{pub.index}/{start}", record


def _python_step(st: _RunState, step: Step) -> dict[str, Any]:
    """A step of installed code, in a child process: its inputs gathered from the run, its
    output kept for the steps (and PUBs) that read it, and what ran recorded."""
    inputs = {name: _input_value(st, name, source) for name, source in step.inputs}
    try:
        output, facts = run_step(step.entry_point, inputs, st.ctx.steps)
    except PythonStepError as exc:
        raise StepFailedError(exc, "deterministic", {"entry_point": step.entry_point,
                                                     **({"field": exc.field} if exc.field else {})}) from exc
    st.outputs[step.id] = output
    return {**facts, "output": output, "output_sha256": sha256_text(canonical_bytes(output).decode())}


def _input_value(st: _RunState, name: str, source: dict[str, Any]) -> Any:
    if "value" in source:
        return source["value"]
    if "dataset" in source:
        return (st.spec.datasets or {})[source["dataset"]]
    if "step" in source:
        output = st.outputs[source["step"]]
        if "output" not in source:
            return output
        if not isinstance(output, dict) or source["output"] not in output:
            raise StepFailedError(WorkflowError(f"inputs.{name}", f"step {source['step']!r} gave no output "
                                                f"{source['output']!r}"), "deterministic", {})
        return output[source["output"]]
    by_pub: dict[int, list[Any]] = {}  # {"results": "execution"}: each PUB's results, binding by binding
    for pub, _, data in st.pub_results:
        by_pub.setdefault(pub.index, []).extend(data.get("counts") or data["evs"])
    return [{"pub": index, "results": results} for index, results in sorted(by_pub.items())]


def _resolved_pubs(st: _RunState) -> list[Any]:
    """The PUBs with the parameter values python steps gave put in (at most max_bindings)."""
    resolved = []
    for i, pub in enumerate(st.spec.pubs or ()):
        source = pub.get("parameter_values")
        if isinstance(source, dict):
            values = (st.outputs.get(source["step"]) or {}).get(source["output"])
            if not isinstance(values, list) or not 0 < len(values) <= int(source["max_bindings"]):
                raise StepFailedError(WorkflowError(
                    f"execute.pubs[{i}].parameter_values", f"step {source['step']!r} must give a list of "
                    f"1..{source['max_bindings']} bindings as {source['output']!r}"), "deterministic", {})
            pub = {**pub, "parameter_values": values}
        resolved.append(pub)
    return resolved


def _single_job(st: _RunState, step: str, backend: Backend, circuit: QuantumCircuit,
                pubs: Sequence[Pub]) -> Iterator[StepRecord]:
    """All PUBs in one Aer job with the run's seed, each then recorded as its own entry (a
    resumed run computes the job again: the same seed gives the same results)."""
    attempts: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    try:
        results = _guarded(st.ctx, backend, lambda: backend.run_job(circuit, pubs, st.spec.seed_simulator),
                           attempts)
    except BackendError as exc:
        raise StepFailedError(exc, exc.kind, {"attempts": attempts, "job": "single"}) from exc
    execute_ms = round(1000 * (time.perf_counter() - t0), 3)
    for pub, data in zip(pubs, results, strict=True):
        ref = st.ctx.keep(canonical_bytes(data), "application/json")
        st.pub_results.append((pub, 0, data))
        bindings = len(data["counts"]) if pub.shots is not None else pub.bindings
        record: dict[str, Any] = {
            "kind": "pub_result", "primitive": st.spec.primitive, "pub": pub.index, "job": "single",
            "bindings": [0, bindings], "seed_simulator": st.spec.seed_simulator,
            "result_sha256": ref["sha256"], "artifacts": {"result": ref}, "execute_ms": execute_ms,
            **({"attempts": attempts} if attempts else {})}
        if pub.shots is not None:
            record |= {"shots": pub.shots, "shots_taken": pub.shots * bindings}
        else:
            record |= {"precision": pub.precision, "evs": data["evs"], "stds": data["stds"]}
        yield f"{step}/pub{pub.index}/0", record


def _chunk_computation(ctx: ExecutionContext, backend: Backend, circuit: QuantumCircuit, pub: Pub,
                       bindings: tuple[int, int], seed: int) -> Callable[[], dict[str, Any]]:
    """Computing one chunk here: through the backend's breaker, retried while environmental."""
    attempts: list[dict[str, Any]] = []

    def compute() -> dict[str, Any]:
        try:
            return _guarded(ctx, backend, lambda: backend.run_pub_chunk(circuit, pub, *bindings, seed),
                            attempts)
        except BackendError as exc:
            raise StepFailedError(exc, exc.kind, {"attempts": attempts, "pub": pub.index,
                                                  "bindings": list(bindings)}) from exc
    return compute


def chunk_seed(spec: WorkflowSpec, pub: int, start: int) -> int:
    """The simulator seed of one chunk of a sweep: fixed by the definition alone."""
    return spec.seed_simulator + 1_000_003 * pub + start


def _execution(st: _RunState) -> dict[str, Any]:
    spec, transpiled = st.spec, st.transpiled
    assert transpiled is not None
    if spec.pubs is not None:
        shots = sum(pub.shots * len(data["counts"]) for pub, _, data in st.pub_results if pub.shots)
        backend = st.ctx.catalog.get(spec.backend, spec.qubits, spec.noise_seed)
        return {"backend": backend.describe(), **({"calibration": st.calibration} if st.calibration else {}),
                "primitive": spec.primitive, "pubs": len(spec.pubs),
                "results": len(st.pub_results), "shots": shots, "seed_simulator": spec.seed_simulator,
                "environment": environment()}
    if spec.observable:
        return _final_estimate(st)
    bound = transpiled.assign_parameters(st.parameters) if st.parameters else transpiled
    calibration = _calibration(st, bound)
    t0 = time.perf_counter()
    counts, how = st.evaluate(bound)
    shots = spec.shots
    extra_rounds: list[dict[str, Any]] = []
    if spec.quality is not None and spec.template != "qaoa_maxcut" and ideal_distribution(spec):
        # Quality failures: outside the band, take more shots (doubling, the seed advanced by
        # the round number, all recorded) up to the budget; still outside, the report flags it.
        ideal = ideal_distribution(spec)
        tvd = total_variation(counts, ideal)
        while tvd > spec.quality["max_tvd"] and shots * 2 <= spec.quality["max_shots"]:
            shots *= 2
            seeded = replace(spec, shots=shots, seed_simulator=spec.seed_simulator + len(extra_rounds) + 1)
            counts, how = st.evaluate(bound, seeded)
            tvd = total_variation(counts, ideal)
            extra_rounds.append({"shots": shots, "seed_simulator": seeded.seed_simulator,
                                 "total_variation_distance": round(tvd, 6)})
    st.counts = counts
    return {**how, **({"calibration": calibration} if calibration else {}),
            "parameters": st.parameters or None, "shots": shots,
            "shots_taken": spec.shots + sum(r["shots"] for r in extra_rounds),
            "seed_simulator": spec.seed_simulator, "quality_rounds": extra_rounds,
            "counts": dict(sorted(counts.items())),
            "artifacts": {"counts": st.ctx.keep(canonical_bytes(counts), "application/json")},
            "execute_ms": round(1000 * (time.perf_counter() - t0), 3), "environment": environment()}


def _final_estimate(st: _RunState) -> dict[str, Any]:
    """A variational eigensolver's result: the observable at the loop's best parameters."""
    spec = st.spec
    assert st.transpiled is not None
    calibration = _calibration(st, st.transpiled)
    t0 = time.perf_counter()
    energy, std = _estimate(st, st.parameters, spec.seed_simulator)
    st.derived = {"energy": round(energy, 12), "energy_std": round(std, 12)}
    backend = st.ctx.catalog.get(spec.backend, spec.qubits, spec.noise_seed)
    return {"backend": backend.describe(), **({"calibration": calibration} if calibration else {}),
            "primitive": spec.primitive, "parameters": st.parameters, "precision": spec.precision,
            "observable_dataset": spec.observable_dataset, **st.derived,
            "seed_simulator": spec.seed_simulator,
            "execute_ms": round(1000 * (time.perf_counter() - t0), 3), "environment": environment()}


def _post_processing(st: _RunState) -> dict[str, Any]:
    if st.spec.observable:
        return dict(st.derived)
    if st.spec.pubs is not None:
        return {"bindings": sum(len(d.get("counts") or d["evs"]) for _, _, d in st.pub_results),
                "result_digests": [sha256_text(canonical_bytes(d).decode()) for _, _, d in st.pub_results]}
    shots = sum(st.counts.values())
    probabilities = {k: round(v / shots, 12) for k, v in sorted(st.counts.items())}
    if st.spec.template == "qaoa_maxcut":
        st.derived = {"expected_cut": round(expected_cut(st.counts, st.spec.graph), 12)}
    elif st.spec.source is not None:
        st.derived = {}  # a user's circuit: its meaning is the user's post-processing
    else:
        # <Z...Z>: the parity a GHZ state's correlations show.
        parity = sum((-1) ** bits.count("1") * p for bits, p in probabilities.items())
        st.derived = {"parity_expectation": round(parity, 12)}
    return {"probabilities": probabilities, **st.derived}


def _report(st: _RunState) -> dict[str, Any]:
    spec, counts = st.spec, st.counts
    if spec.pubs is not None:
        return _pub_report(st)
    if spec.observable:
        return _eigensolver_report(st)
    if spec.template == "qaoa_maxcut":
        optimum, winners = brute_force_maxcut(spec.qubits, spec.graph)
        likeliest = max(counts, key=lambda bits: (counts[bits], bits))
        value = expected_cut(counts, spec.graph)
        return {"classical_baseline": {"method": "brute force", "max_cut": optimum,
                                       "optimal_assignments": winners},
                "expected_cut": round(value, 12), "approximation_ratio": round(value / optimum, 12),
                "most_likely": likeliest, "most_likely_cut": cut_value(likeliest, spec.graph),
                "sampled_optimum": max(cut_value(b, spec.graph) for b in counts)}
    ideal = ideal_distribution(spec)
    if not ideal:
        return {"classical_baseline": None, "total_variation_distance": None, "quality": None,
                "parity_expectation": None}
    tvd = total_variation(counts, ideal)
    verdict = None if spec.quality is None else (
        "within band" if tvd <= spec.quality["max_tvd"] else "flagged: outside band at shot budget")
    return {"classical_baseline": ideal, "total_variation_distance": round(tvd, 6),
            "parity_expectation": st.derived.get("parity_expectation"), "quality": verdict}


def _eigensolver_report(st: _RunState) -> dict[str, Any]:
    """The classical baseline of a variational eigensolver: the exact ground-state energy of its
    observable by diagonalisation, and how far the loop's energy is from it."""
    spec = st.spec
    if spec.qubits > EXACT_DIAGONALISATION_MAX_QUBITS:
        return {"classical_baseline": None, "energy": st.derived["energy"]}
    exact = exact_ground_energy(spec.observable)
    return {"classical_baseline": {"method": "exact diagonalisation (numpy.linalg.eigvalsh)",
                                   "ground_energy": round(exact, 12)},
            "energy": st.derived["energy"], "energy_error": round(abs(st.derived["energy"] - exact), 12)}


def _pub_report(st: _RunState) -> dict[str, Any]:
    """For Estimator PUBs on up to EXACT_MAX_QUBITS qubits, the classical baseline: every
    expectation value computed exactly from the statevector, and the largest error against it."""
    spec = st.spec
    assert spec.source is not None and spec.primitive is not None
    if spec.primitive != "estimator" or spec.qubits > EXACT_MAX_QUBITS:
        return {"classical_baseline": None}
    circuit = load_circuit(spec.source, spec.primitive).circuit
    worst = 0.0
    def error(values: np.ndarray, op: Any, value: float) -> float:
        state = Statevector(circuit.assign_parameters(values) if circuit.num_parameters else circuit)
        return abs(float(np.real(state.expectation_value(op))) - value)

    for pub, start, data in st.pub_results:
        operators = [sparse_pauli_op(terms) for terms in pub.observables]
        if spec.job == "single":  # paired: the i-th observable at the i-th binding
            for values, op, value in zip(pub.values, operators, data["evs"], strict=True):
                worst = max(worst, error(values, op, value))
            continue
        for offset, row in enumerate(data["evs"]):
            for op, value in zip(operators, row, strict=True):
                worst = max(worst, error(pub.values[start + offset], op, value))
    return {"classical_baseline": {"method": "exact statevector expectation values"},
            "max_abs_error": round(worst, 12)}


STAGES: dict[str, Callable[[_RunState], dict[str, Any]]] = {
    "data_preparation": _data_preparation,
    "circuit_synthesis": _circuit_synthesis,
    "transpilation": _transpilation,
    "hybrid_optimisation": _hybrid_optimisation,
    "execution": _execution,
    "post_processing": _post_processing,
    "report": _report,
}


def total_variation(counts: dict[str, int], ideal: dict[str, float]) -> float:
    shots = sum(counts.values())
    return 0.5 * sum(abs(counts.get(k, 0) / shots - ideal.get(k, 0.0)) for k in set(counts) | set(ideal))


def transpiled_for(spec: WorkflowSpec, catalog: BackendCatalog, circuit: QuantumCircuit
                   ) -> tuple[QuantumCircuit, str, dict[str, Any]]:
    """The circuit transpiled for the run's backend, its OpenQASM 3 text and the step's record."""
    target = catalog.get(spec.backend, spec.qubits, spec.noise_seed)
    t0 = time.perf_counter()
    transpiled = transpile(circuit, target=target.transpile_target(),
                           optimization_level=spec.optimization_level, seed_transpiler=spec.seed_transpiler)
    qasm = qasm3.dumps(transpiled)
    return transpiled, qasm, {
        "optimization_level": spec.optimization_level, "seed_transpiler": spec.seed_transpiler,
        "target": spec.backend, "qasm3_sha256": sha256_text(qasm), "depth": transpiled.depth(),
        "gate_counts": dict(sorted(transpiled.count_ops().items())),
        "transpile_ms": round(1000 * (time.perf_counter() - t0), 3)}
