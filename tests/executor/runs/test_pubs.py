"""Sampler and Estimator PUBs with parameter sweeps, in Qiskit's V2 semantics: every chunk of a
sweep is its own entry and artifact, and equals what Aer's own primitives return."""

from __future__ import annotations

import copy
import json
from typing import Any

import grpc
import numpy as np
import pytest
from qiskit import transpile
from qiskit.primitives import BitArray
from qiskit.quantum_info import SparsePauliOp
from qiskit_aer import AerSimulator
from qiskit_aer.primitives import EstimatorV2, SamplerV2

from qledger.ledger import dsse
from qledger.ledger.store.artifacts import HotArtifacts
from qledger.ledger.verify import verify
from qledger.runs.circuit_source import CircuitError, load_circuit
from qledger.runs.pubs import CHUNK, MAX_BINDINGS, counts_per_binding, parse_pubs
from qledger.runs.reference_workflows import load
from qledger.runs.shots import reserved_shots
from qledger.runs.workflow import WorkflowError, parse_workflow
from tests.executor.conftest import Service
from tests.executor.rpc.test_grpc import code_of

SWEEP = load("sweep_qasm3")


def payloads(service: Service, workflow: dict[str, Any]) -> list[dict[str, Any]]:
    entries = service.watch(service.submit(workflow).run.run_id)
    assert entries[-1].event_type.endswith("Run.Completed"), entries[-1]
    return [json.loads(dsse.parse(e.envelope).payload)["payload"] for e in entries]


def transpiled(workflow: dict[str, Any], primitive: str) -> Any:
    circuit = load_circuit(workflow["circuit"], primitive).circuit
    settings = workflow["transpile"]
    return transpile(circuit, AerSimulator(), optimization_level=settings["optimization_level"],
                     seed_transpiler=settings["seed_transpiler"])


def with_pubs(primitive: str, pubs: list[dict[str, Any]]) -> dict[str, Any]:
    workflow = copy.deepcopy(SWEEP)
    workflow["execute"]["primitive"], workflow["execute"]["pubs"] = primitive, pubs
    return workflow


def assert_chunk_is_aer_samplers(hot: HotArtifacts, record: dict[str, Any], circuit: Any,
                                 values: list[list[float]], shots: int) -> None:
    """The kept results of a recorded chunk are what Aer's SamplerV2 gives with its seed."""
    start, stop = record["bindings"]
    kept = json.loads(hot.get(record["result_sha256"]) or b"{}")
    direct = SamplerV2(seed=record["seed_simulator"]).run(
        [(circuit, np.array(values[start:stop]), shots)]).result()[0]
    assert kept["counts"] == [{"c": dict(sorted(direct.data.c.get_counts(i).items()))}
                              for i in range(stop - start)]


def test_a_sampler_sweep_is_recorded_chunk_by_chunk_as_aer_samples_it(service: Service) -> None:
    values = [[0.05 * i, 0.1 * i] for i in range(2 * CHUNK + 30)]  # three chunks
    workflow = with_pubs("sampler", [{"parameter_values": values, "shots": 256}])
    steps = [p for p in payloads(service, workflow) if p.get("record", {}).get("kind") == "pub_result"]
    chunks = [[0, CHUNK], [CHUNK, 2 * CHUNK], [2 * CHUNK, 2 * CHUNK + 30]]
    assert [s["record"]["bindings"] for s in steps] == chunks
    circuit = transpiled(workflow, "sampler")
    hot = HotArtifacts(service.app.ledger)
    for step in steps:
        assert_chunk_is_aer_samplers(hot, step["record"], circuit, values, 256)
    assert verify(service.app.source()).ok


def test_an_estimator_pub_gives_exact_expectation_values_and_a_classical_baseline(service: Service) -> None:
    values = [[0.3 * i, 0.2 * i] for i in range(12)]
    observables = [[["ZZZ", 1.0]], [["XII", 0.5], ["IZI", -1.0]], [["IIX", 2.0]]]
    pub = {"observables": observables, "parameter_values": values, "precision": 0.0}
    workflow = with_pubs("estimator", [pub])
    steps = payloads(service, workflow)
    result = next(p["record"] for p in steps if p.get("record", {}).get("kind") == "pub_result")
    report = next(p["record"] for p in steps if p.get("step") == "report")
    circuit = transpiled(workflow, "estimator")
    grid = np.empty((1, 3), dtype=object)
    for k, terms in enumerate(observables):
        grid[0, k] = SparsePauliOp.from_list([(p, c) for p, c in terms]).apply_layout(circuit.layout)
    direct = EstimatorV2(options={"run_options": {"seed": result["seed_simulator"]}}).run(
        [(circuit, grid, np.array(values).reshape(12, 1, 2), 0.0)]).result()[0]
    assert np.allclose(result["evs"], direct.data.evs, atol=1e-12)
    assert report["max_abs_error"] < 1e-9 and report["classical_baseline"]


def test_the_shipped_sweep_runs_and_repeats_exactly(service: Service) -> None:
    def results() -> list[str]:
        return [p["record"]["result_sha256"] for p in payloads(service, SWEEP)
                if "result_sha256" in p.get("record", {})]

    first, second = results(), results()
    assert len(first) == 1 and first == second  # 100 bindings: one chunk, the same results
    assert reserved_shots(SWEEP) == 100 * 1024


@pytest.mark.parametrize(("primitive", "pubs", "field"), [
    ("sampler", [{"parameter_values": [[0.1, 0.2], [0.3]], "shots": 10}],
     "execute.pubs[0].parameter_values[1]"),
    ("sampler", [{"parameter_values": [[0.1, 0.2]]}], "execute.pubs[0].shots"),
    ("sampler", [{"parameter_values": [[0.1, "x"]], "shots": 10}],
     "execute.pubs[0].parameter_values[0][1]"),
    ("sampler", [{"parameter_values": [[0.1, 0.2]], "shots": 10, "precision": 0.1}],
     "execute.pubs[0].precision"),
    ("estimator", [{"observables": [[["ZZ", 1.0]]], "parameter_values": [[0, 0]], "precision": 0.0}],
     "execute.pubs[0].observables[0][0]"),
    ("estimator", [{"observables": [[["ZZZ", "x"]]], "parameter_values": [[0, 0]], "precision": 0.0}],
     "execute.pubs[0].observables[0][0][1]"),
    ("estimator", [{"observables": [[["ZQZ", 1.0]]], "parameter_values": [[0, 0]], "precision": 0.0}],
     "execute.pubs[0].observables[0][0][0]"),
    ("estimator", [{"observables": [[["ZZZ", 1.0]]], "parameter_values": [[0, 0]], "precision": 2}],
     "execute.pubs[0].precision"),
    ("annealer", [{"parameter_values": [[0.1, 0.2]], "shots": 10}], "execute.primitive"),
    ("sampler", [], "execute.pubs"),
])
def test_bad_pubs_are_named(primitive: str, pubs: list[dict[str, Any]], field: str) -> None:
    with pytest.raises(WorkflowError) as caught:
        parse_workflow(with_pubs(primitive, pubs))
    assert caught.value.field == field


@pytest.mark.parametrize("width", [1, 5, 8, 9, 64, 70])
def test_counts_per_binding_are_bitarrays_own_counts(width: int) -> None:
    rng = np.random.default_rng(width)
    bits = BitArray(rng.integers(0, 256, size=(6, 40, (width + 7) // 8), dtype=np.uint8), width)
    assert counts_per_binding(bits, 6) == [dict(sorted(bits.get_counts(i).items())) for i in range(6)]


def test_a_sweep_over_the_limit_is_refused() -> None:
    with pytest.raises(CircuitError) as caught:
        parse_pubs("sampler", [{"parameter_values": [[0.0, 0.0]] * (MAX_BINDINGS + 1), "shots": 1}],
                   ("phi", "theta"), 3)
    assert caught.value.field == "execute.pubs"


def test_a_swept_circuit_takes_no_fixed_bindings_and_pubs_need_a_source_circuit() -> None:
    bound = with_pubs("sampler", [{"parameter_values": [[0, 0]], "shots": 1}])
    bound["circuit"]["parameters"] = {"phi": 0, "theta": 0}
    with pytest.raises(WorkflowError) as caught:
        parse_workflow(bound)
    assert caught.value.field == "circuit.parameters"
    template = copy.deepcopy(load("bell"))
    template["execute"] |= {"primitive": "sampler", "pubs": [{"parameter_values": [[]], "shots": 1}]}
    with pytest.raises(WorkflowError) as caught:
        parse_workflow(template)
    assert caught.value.field == "circuit"


def test_a_binding_of_the_wrong_width_is_refused_over_the_wire(service: Service) -> None:
    workflow = with_pubs("sampler", [{"parameter_values": [[0.1, 0.2, 0.3]], "shots": 10}])
    before = service.app.tree_size()
    code, fields = code_of(lambda: service.submit(workflow))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert fields == ["workflow.execute.pubs[0].parameter_values[0]"]
    assert service.app.tree_size() == before


def test_an_estimator_pub_with_a_precision_is_reproducible_from_its_seed() -> None:
    """Aer adds Gaussian noise of the target precision; the run's seed must fix it."""
    from qiskit import QuantumCircuit
    from qiskit.circuit import Parameter

    from qledger.runs.pubs import Pub, run_chunk

    theta = Parameter("theta")
    circuit = QuantumCircuit(2)
    circuit.ry(theta, 0)
    circuit.cx(0, 1)
    pub = Pub(0, np.linspace(0, 1, 5).reshape(5, 1), observables=((("ZZ", 1.0),), (("XI", 0.5),)),
              precision=0.05)
    first, again = (run_chunk(AerSimulator(), circuit, pub, 0, 5, 11) for _ in range(2))
    assert first == again and first["stds"][0] == [0.05, 0.05]
    other = run_chunk(AerSimulator(), circuit, pub, 0, 5, 12)
    assert other["evs"] != first["evs"]
    exact = run_chunk(AerSimulator(), circuit, Pub(0, pub.values, observables=pub.observables, precision=0.0),
                      0, 5, 11)
    assert max(abs(a - b) for row, ref in zip(first["evs"], exact["evs"], strict=True)
               for a, b in zip(row, ref, strict=True)) < 0.25  # noise of the stated size, not another result


def _circuits() -> dict[str, Any]:
    from qiskit import ClassicalRegister, QuantumCircuit, QuantumRegister
    from qiskit.circuit import Parameter

    a, b = Parameter("a"), Parameter("b")
    one = QuantumCircuit(3)
    one.ry(a, 0), one.rx(b, 1), one.cx(0, 2), one.h(1)
    one.measure_all()
    q, alpha, beta = QuantumRegister(3), ClassicalRegister(2, "alpha"), ClassicalRegister(1, "beta")
    two = QuantumCircuit(q, alpha, beta)  # registers interleaved with the qubits they measure
    two.ry(a, 0), two.rx(b, 1), two.cx(0, 2)
    two.measure(q[0], alpha[0]), two.measure(q[1], beta[0]), two.measure(q[2], alpha[1])
    mid = QuantumCircuit(q, alpha, beta)  # a mid-circuit measurement: no sampling shortcut
    mid.ry(a, 0), mid.measure(q[0], beta[0]), mid.reset(0), mid.rx(b, 0), mid.cx(0, 1)
    mid.measure(q[0], alpha[0]), mid.measure(q[1], alpha[1])
    fixed = QuantumCircuit(2)
    fixed.h(0), fixed.cx(0, 1)
    fixed.measure_all()
    return {"one register": one, "two registers": two, "mid-circuit": mid, "no parameters": fixed}


@pytest.mark.parametrize("backend", ["aer_ideal", "aer_noisy", "aer_mps", "fake:manila"])
def test_sweep_counts_are_aer_samplers_outcome_for_outcome(backend: str) -> None:
    """A sweep's counts come from the simulator without the shot memory SamplerV2 keeps; for
    every register layout and noise they must be the primitive's own, with the same seed."""
    from qledger.runs.backends import BackendCatalog
    from qledger.runs.pubs import sampler_counts

    model = BackendCatalog().get(backend, 3, 7)
    simulator = model.simulator()
    values = np.random.default_rng(1).uniform(0, 3, size=(23, 2))
    for name, circuit in _circuits().items():
        isa = transpile(circuit, target=model.transpile_target(), optimization_level=1, seed_transpiler=3)
        swept = values if isa.num_parameters else None
        bindings = len(values) if isa.num_parameters else 1
        result = SamplerV2.from_backend(simulator, seed=11).run([(isa, swept, 333)]).result()[0]
        expected = [{register: dict(sorted(getattr(result.data, register).get_counts(
                        i if isa.num_parameters else None).items()))
                     for register in sorted(result.data.keys())} for i in range(bindings)]
        assert sampler_counts(simulator, isa, swept, 333, 11) == expected, name
        assert sampler_counts(simulator, isa, swept, 333, 12) != expected, name  # the seed counts


def test_a_circuit_without_parameters_takes_one_binding_unless_paired() -> None:
    """Nothing to sweep: N empty bindings would run the circuit once for N results."""
    for primitive, extra in (("sampler", {"shots": 10}), ("estimator", {"observables": [[["ZZZ", 1.0]],
                                                                                         [["XII", 1.0]]],
                                                                        "precision": 0.0})):
        pub = {"parameter_values": [[], []], **extra}
        with pytest.raises(CircuitError) as caught:
            parse_pubs(primitive, [pub], (), 3)
        assert caught.value.field == "execute.pubs[0].parameter_values"
        assert parse_pubs(primitive, [{**pub, "parameter_values": [[]]}], (), 3)[0].bindings == 1
        # A single job pairs the i-th binding with the i-th observable (Aer's broadcasting).
        assert parse_pubs(primitive, [pub], (), 3, paired=True)[0].bindings == 2
