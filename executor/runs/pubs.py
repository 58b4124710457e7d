"""Execution in the shape of Qiskit's V2 primitives: Sampler and Estimator PUBs with sweeps.

A workflow's ``execute.pubs`` lists PUBs over the workflow's circuit.  A Sampler PUB is
``{"parameter_values": [[...], ...], "shots": n}``: counts per classical register for each
binding.  An Estimator PUB is ``{"observables": [[["ZZ", 1.0], ["XI", 0.5]], ...],
"parameter_values": [[...], ...], "precision": p}``: for each binding and each observable (a
``SparsePauliOp`` as Pauli strings with coefficients, qubit 0 rightmost), the expectation value
and its standard error.  A binding lists one value per circuit parameter, in Qiskit's order
(``circuit.parameters``: by name).  Aer computes the results: Estimator PUBs on its
``EstimatorV2``, a Sampler sweep's counts on the simulator as Aer's ``SamplerV2`` calls it
(equal to the primitive's counts outcome for outcome, ``sampler_counts``).  A sweep is cut
into chunks of ``CHUNK`` bindings, each recorded as its own entry with its results as an
artifact, so a run resumes chunk by chunk and a query can name one binding.  With
``execute.job: "single"`` the Sampler PUBs run instead in one job of ``SamplerV2`` itself, as
``SamplerV2.run(pubs)`` runs them, so that their results (shot memory too) equal Aer's own
with the same seed, bit for bit (what ``LedgerSampler`` asks for).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from qiskit import QuantumCircuit
from qiskit.quantum_info import SparsePauliOp
from qiskit_aer import AerError, AerSimulator
from qiskit_aer.primitives import EstimatorV2, SamplerV2

from qledger.runs.circuit_source import CircuitError

PRIMITIVES = ("sampler", "estimator")
CHUNK = 100  # bindings per recorded result
MAX_BINDINGS = 100_000  # per run
MAX_OBSERVABLES = 64  # per Estimator PUB
MAX_PUB_SHOTS = 1_000_000


@dataclass(frozen=True)
class Pub:
    index: int
    values: np.ndarray  # (bindings, parameters)
    shots: int | None = None  # Sampler
    observables: tuple[tuple[tuple[str, float], ...], ...] = ()  # Estimator: terms of each observable
    precision: float | None = None  # Estimator

    @property
    def bindings(self) -> int:
        return int(self.values.shape[0])

    def chunks(self) -> Iterator[tuple[int, int]]:
        for start in range(0, self.bindings, CHUNK):
            yield start, min(start + CHUNK, self.bindings)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value)


def _values(raw: Any, field: str, parameters: tuple[str, ...]) -> np.ndarray:
    if raw is None:
        raw = [[]] if not parameters else raw
    if not isinstance(raw, list) or not raw:
        raise CircuitError(field, f"must be a non-empty list of bindings, each {len(parameters)} numbers "
                           f"for {list(parameters)}")
    width = len(parameters)
    if all(type(binding) is list and len(binding) == width
           and all(type(v) is float or type(v) is int for v in binding) for binding in raw):
        values = np.array(raw, dtype=float).reshape(len(raw), width)
        if np.isfinite(values).all():  # a sweep's thousands of numbers, checked at once
            return values
    for j, binding in enumerate(raw):  # which binding is wrong, and how
        if not isinstance(binding, list) or len(binding) != width:
            raise CircuitError(f"{field}[{j}]", f"needs {width} values, for {list(parameters)}, "
                               f"not {len(binding) if isinstance(binding, list) else binding!r}")
        if not all(_number(v) for v in binding):
            raise CircuitError(f"{field}[{j}]", "values must be finite numbers")
    return np.array(raw, dtype=float).reshape(len(raw), width)


def _observables(raw: Any, field: str, qubits: int, limit: int = MAX_OBSERVABLES
                 ) -> tuple[tuple[tuple[str, float], ...], ...]:
    if not isinstance(raw, list) or not 0 < len(raw) <= limit:
        raise CircuitError(field, f"must list 1..{limit} observables, each a list of "
                           "[Pauli string, coefficient] terms")
    return tuple(pauli_terms(terms, f"{field}[{k}]", qubits) for k, terms in enumerate(raw))


def pauli_terms(raw: Any, field: str, qubits: int) -> tuple[tuple[str, float], ...]:
    """One observable: a non-empty list of [Pauli string, real coefficient] on ``qubits``."""
    if not isinstance(raw, list) or not raw:
        raise CircuitError(field, "an observable is a non-empty list of [Pauli string, coefficient]")
    parsed = []
    for t, term in enumerate(raw):
        where = f"{field}[{t}]"
        if (not isinstance(term, list) or len(term) != 2 or not isinstance(term[0], str)
                or not _number(term[1])):
            raise CircuitError(where, "a term is [Pauli string, real coefficient]")
        pauli = term[0]
        if len(pauli) != qubits or set(pauli) - set("IXYZ"):
            raise CircuitError(where, f"a Pauli string of {qubits} letters from I, X, Y, Z (the circuit's "
                               f"width; qubit 0 rightmost), not {pauli!r}")
        parsed.append((pauli, float(term[1])))
    return tuple(parsed)


def parse_pubs(primitive: Any, raw: Any, parameters: tuple[str, ...], qubits: int,
               paired: bool = False) -> tuple[Pub, ...]:
    """The PUBs of ``execute``, each checked against the circuit: its parameters and its width.
    An Estimator PUB evaluates every observable at every binding, or, ``paired`` (a single job,
    Aer's broadcasting flattened), the i-th observable at the i-th binding."""
    if primitive not in PRIMITIVES:
        raise CircuitError("execute.primitive", f"must be one of {list(PRIMITIVES)}")
    if not isinstance(raw, list) or not raw:
        raise CircuitError("execute.pubs", "must be a non-empty list of PUBs")
    pubs, total = [], 0
    allowed = {"parameter_values", "shots"} if primitive == "sampler" else {
        "parameter_values", "observables", "precision"}
    for i, item in enumerate(raw):
        field = f"execute.pubs[{i}]"
        if not isinstance(item, dict):
            raise CircuitError(field, "a PUB is an object")
        unknown = sorted(set(item) - allowed)
        if unknown:
            raise CircuitError(f"{field}.{unknown[0]}", f"is not a member of a {primitive} PUB "
                               f"({', '.join(sorted(allowed))})")
        raw_values = item.get("parameter_values")
        if isinstance(raw_values, dict):  # a python step's output, known when the run gets there
            raw_values = [[0.0] * len(parameters)]
        values = _values(raw_values, f"{field}.parameter_values", parameters)
        if not parameters and not paired and values.shape[0] > 1:
            # Nothing to sweep: the circuit would run once and its results stand for N bindings.
            raise CircuitError(f"{field}.parameter_values", "the circuit has no parameters: give one "
                               f"binding, [[]], not {values.shape[0]}")
        total += values.shape[0]
        if total > MAX_BINDINGS:
            raise CircuitError("execute.pubs", f"the sweep has more than {MAX_BINDINGS} bindings")
        if primitive == "sampler":
            shots = item.get("shots")
            if not isinstance(shots, int) or isinstance(shots, bool) or not 0 < shots <= MAX_PUB_SHOTS:
                raise CircuitError(f"{field}.shots", f"must be an integer in 1..{MAX_PUB_SHOTS}")
            pubs.append(Pub(i, values, shots=shots))
        else:
            precision = item.get("precision")
            if not isinstance(precision, int | float) or not _number(precision) or not 0 <= precision < 1:
                raise CircuitError(f"{field}.precision", "must be a number in [0, 1)")
            observables = _observables(item.get("observables"), f"{field}.observables", qubits,
                                       values.shape[0] if paired else MAX_OBSERVABLES)
            if paired and len(observables) != values.shape[0]:
                raise CircuitError(f"{field}.observables", "in a single job the i-th observable goes with "
                                   f"the i-th binding: give {values.shape[0]}, one per binding")
            pubs.append(Pub(i, values, observables=observables, precision=float(precision)))
    return tuple(pubs)


def sparse_pauli_op(terms: tuple[tuple[str, float], ...]) -> SparsePauliOp:
    return SparsePauliOp.from_list(list(terms))


def counts_per_binding(bits: Any, bindings: int) -> list[dict[str, int]]:
    """``BitArray.get_counts(i)`` for every binding ``i`` at once, sorted by outcome: the same
    dicts, about 20 times faster (one matrix product turns each shot's bytes into an integer)."""
    packed = np.asarray(bits.array).reshape(bindings, -1, bits.array.shape[-1])  # big-endian bytes
    weights = 256 ** np.arange(packed.shape[-1] - 1, -1, -1, dtype=object)
    outcomes = packed.astype(object) @ weights if packed.shape[-1] > 7 else (
        packed.astype(np.int64) @ weights.astype(np.int64))
    width = int(bits.num_bits)
    outcomes = outcomes & ((1 << width) - 1)  # bits beyond the register in the top byte are padding
    result = []
    for row in outcomes:
        values, counts = np.unique(row, return_counts=True)
        result.append({format(int(v), f"0{width}b"): int(k) for v, k in zip(values, counts, strict=True)})
    return result


def run_job(simulator: AerSimulator, circuit: QuantumCircuit, pubs: Sequence[Pub], seed: int
            ) -> list[dict[str, Any]]:
    """Every Sampler PUB in one job of Aer's ``SamplerV2``, exactly as ``SamplerV2(seed=seed)
    .run(pubs)`` runs them (Aer seeds each binding from the job's seed in turn, so a PUB's
    samples depend on the PUBs before it in the job): counts per binding and register, and each
    register's shot memory, the packed bits of Qiskit's ``BitArray`` (base64, C order, shape
    (bindings, shots, bytes)), so that the results can be rebuilt bit for bit."""
    if pubs and pubs[0].shots is None:
        return _estimator_job(simulator, circuit, pubs, seed)
    sampler = SamplerV2.from_backend(simulator, seed=seed)
    results = sampler.run([(circuit, pub.values if circuit.num_parameters else None, pub.shots)
                           for pub in pubs]).result()
    out = []
    for pub, result in zip(pubs, results, strict=True):
        bindings = pub.bindings if circuit.num_parameters else 1
        registers = sorted(result.data.keys())
        per_register = {name: counts_per_binding(getattr(result.data, name), bindings) for name in registers}
        memory = {name: {"num_bits": int(getattr(result.data, name).num_bits),
                         "packed_base64": base64.b64encode(np.ascontiguousarray(
                             getattr(result.data, name).array).tobytes()).decode()}
                  for name in registers}
        out.append({"counts": [{name: per_register[name][i] for name in registers} for i in range(bindings)],
                    "memory": memory})
    return out


def _estimator_job(simulator: AerSimulator, circuit: QuantumCircuit, pubs: Sequence[Pub], seed: int
                   ) -> list[dict[str, Any]]:
    """Estimator PUBs (paired) in one job of Aer's ``EstimatorV2`` with ``seed``: its evs and
    stds unrounded, as Aer gives them."""
    layout = circuit.layout
    estimator = EstimatorV2.from_backend(simulator, options={"run_options": {"seed_simulator": seed}})
    aer_pubs = []
    for pub in pubs:
        observables = [sparse_pauli_op(terms) for terms in pub.observables]
        if layout is not None:
            observables = [op.apply_layout(layout) for op in observables]
        aer_pubs.append((circuit, observables, pub.values if circuit.num_parameters else None, pub.precision))
    results = estimator.run(aer_pubs).result()
    return [{"evs": [float(v) for v in np.asarray(r.data.evs).ravel()],
             "stds": [float(v) for v in np.asarray(r.data.stds).ravel()]} for r in results]


def sampler_counts(simulator: AerSimulator, circuit: QuantumCircuit, values: np.ndarray | None,
                   shots: int, seed: int) -> list[dict[str, dict[str, int]]]:
    """For each binding, the counts per classical register that
    ``SamplerV2.from_backend(simulator, seed=seed).run([(circuit, values, shots)])`` gives, equal
    to them outcome for outcome: the simulator call the primitive makes (same circuit, shots,
    seed and bindings), less the shot memory it asks for.  A sweep wants only counts, and the
    memory (a string per shot, then a bit array) cost a third of a sweep's time and grows with
    shots x bindings."""
    if values is not None and values.shape[1:] != (circuit.num_parameters,):
        raise CircuitError("execute.pubs", f"bindings of {values.shape[1:]} values for "
                           f"{circuit.num_parameters} parameters")
    binds = None if values is None else [{p: values[:, i] for i, p in enumerate(circuit.parameters)}]
    result = simulator.run([circuit], shots=shots, seed_simulator=seed, parameter_binds=binds,
                           memory=False).result()
    expected = 1 if values is None else len(values)
    if len(result.results) != expected:  # a job that failed as a whole reports no experiments
        raise AerError(f"Aer simulation failed: {expected} bindings gave {len(result.results)} results "
                       f"({getattr(result, 'status', '')})")
    # Each register's bits within the simulator's outcome, as the primitive reads them.
    registers = sorted((creg.name, circuit.find_bit(creg[0]).index if creg.size else 0, creg.size)
                       for creg in circuit.cregs)
    whole = len(registers) == 1 and registers[0][1] == 0 and registers[0][2] == circuit.num_clbits
    counts = []
    for experiment in result.results:
        if isinstance(experiment.status, str) and experiment.status.upper().startswith("ERROR"):
            raise AerError(f"Aer simulation failed: {experiment.status}")
        # An outcome is the hex of all classical bits; none measured reads as all zeros.
        outcomes = [(int(key, 16), n) for key, n in (getattr(experiment.data, "counts", None)
                                                      or {"0x0": shots}).items()]
        per_register: dict[str, dict[str, int]] = {}
        for name, start, width in registers:
            mask = (1 << width) - 1
            tally: dict[str, int] = {}
            for outcome, n in outcomes:
                label = format(outcome if whole else (outcome >> start) & mask, f"0{width}b") if width else ""
                tally[label] = tally.get(label, 0) + n
            per_register[name] = dict(sorted(tally.items()))
        counts.append(per_register)
    return counts


def run_chunk(simulator: AerSimulator, circuit: QuantumCircuit, pub: Pub, start: int, stop: int,
              seed: int) -> dict[str, Any]:
    """The results of bindings ``start``..``stop`` of ``pub`` on the transpiled ``circuit``."""
    values = pub.values[start:stop]
    parameters = values if circuit.num_parameters else None
    if pub.shots is not None:
        return {"counts": sampler_counts(simulator, circuit, parameters, pub.shots, seed)}
    layout = circuit.layout
    observables = [sparse_pauli_op(terms) for terms in pub.observables]
    if layout is not None:  # the observables name the circuit's qubits; the ISA circuit is wider
        observables = [op.apply_layout(layout) for op in observables]
    # Aer seeds the noise of a precision > 0 from run_options["seed_simulator"] (not "seed").
    estimator = EstimatorV2.from_backend(simulator, options={"run_options": {"seed_simulator": seed}})
    grid = np.empty((1, len(observables)), dtype=object)
    for k, op in enumerate(observables):
        grid[0, k] = op
    bound = None if parameters is None else parameters.reshape(stop - start, 1, -1)
    result = estimator.run([(circuit, grid, bound, pub.precision)]).result()[0]
    evs = np.asarray(result.data.evs).reshape(-1, len(observables))
    stds = np.asarray(result.data.stds).reshape(-1, len(observables))
    return {"evs": [[round(float(v), 12) for v in row] for row in evs],
            "stds": [[round(float(v), 12) for v in row] for row in stds]}
