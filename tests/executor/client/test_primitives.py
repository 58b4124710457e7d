"""LedgerSampler: Qiskit's own SamplerV2 usage, unchanged but for the constructor, gives results
equal to qiskit_aer.primitives.SamplerV2 with the same seed, bit for bit, and each result is
proven included in a signed checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
from qiskit import QuantumCircuit, transpile
from qiskit.circuit import Parameter
from qiskit.primitives import BaseEstimatorV2, BaseSamplerV2, PrimitiveResult
from qiskit.quantum_info import SparsePauliOp
from qiskit_aer.primitives import EstimatorV2 as AerEstimator
from qiskit_aer.primitives import SamplerV2 as AerSampler

from qledger.client.primitives import LedgerEstimator, LedgerSampler, verify_provenance
from qledger.ledger.admin import CHECKPOINTER
from qledger.ledger.checkpoint import parse_note
from qledger.ledger.keys import KeyStore
from tests.conftest import ONLY_SQLITE
from tests.executor.client.test_client import as_client
from tests.executor.conftest import Service

pytestmark = ONLY_SQLITE  # what is tested does not depend on the store (time budget)

SEED = 1234


def circuits() -> tuple[QuantumCircuit, QuantumCircuit]:
    theta, phi = Parameter("theta"), Parameter("phi")
    sweep = QuantumCircuit(3, name="sweep")
    sweep.ry(theta, 0)
    sweep.cx(0, 1)
    sweep.rz(phi, 1)
    sweep.h(2)
    sweep.cx(1, 2)
    sweep.measure_all()
    bell = QuantumCircuit(2, 2, name="bell")
    bell.h(0)
    bell.cx(0, 1)
    bell.measure([0, 1], [0, 1])
    return sweep, bell


def qiskit_usage(sampler: BaseSamplerV2) -> list[PrimitiveResult]:  # type: ignore[type-arg]
    """Qiskit's documented SamplerV2 usage: PUBs of (circuit, parameter values, shots)."""
    sweep, bell = circuits()
    grid = np.meshgrid(np.linspace(0, np.pi, 4), np.linspace(0, np.pi / 2, 3))
    values = np.stack(grid, axis=-1)  # shape (3, 4, 2): a 3 x 4 sweep of (theta, phi)
    return [
        sampler.run([(sweep, values, 256)]).result(),
        sampler.run([(sweep, values[0], 100), (sweep, values[1, :2], 100)]).result(),  # one job, two PUBs
        sampler.run([(bell,)], shots=512).result(),
    ]


def test_ledger_sampler_equals_aer_bit_for_bit(service: Service) -> None:
    with as_client(service) as client:
        ledger = qiskit_usage(LedgerSampler(client, "aer_ideal", seed=SEED))
    direct = qiskit_usage(AerSampler(seed=SEED))
    for ours, aers in zip(ledger, direct, strict=True):
        assert len(ours) == len(aers)
        for mine, theirs in zip(ours, aers, strict=True):
            assert list(mine.data.keys()) == list(theirs.data.keys()) and mine.data.shape == theirs.data.shape
            for register in theirs.data:
                a, b = getattr(mine.data, register), getattr(theirs.data, register)
                assert a.num_bits == b.num_bits and a.num_shots == b.num_shots
                assert np.array_equal(a.array, b.array), register  # every shot, in order
            assert mine.metadata["shots"] == theirs.metadata["shots"]
    # And where each came from: runs, positions, proofs against a checkpoint the ledger signed.
    provenance = ledger[0].metadata["qledger"]
    assert verify_provenance(provenance)
    note = parse_note(provenance["checkpoint"])
    assert note.signed_by(note.checkpoint.origin, KeyStore(service.home).load(CHECKPOINTER).public)
    run = provenance["runs"][0]
    assert service.run(run["run_id"]).status == "completed"
    assert run["ledger_positions"] == [e.position for e in service.watch(run["run_id"])]
    tampered = {**provenance, "runs": [{**run, "leaf_hashes": ["00" * 32, *run["leaf_hashes"][1:]]}]}
    assert not verify_provenance(tampered)


def test_ledger_sampler_on_a_device_model(service: Service) -> None:
    from qiskit_ibm_runtime.fake_provider import FakeManilaV2

    _, bell = circuits()
    isa = transpile(bell, FakeManilaV2(), optimization_level=1, seed_transpiler=3)
    with as_client(service) as client:
        result = LedgerSampler(client, "fake:manila", seed=SEED).run([(isa,)], shots=300).result()
    counts = result[0].data.c.get_counts()
    assert sum(counts.values()) == 300 and counts.get("00", 0) + counts.get("11", 0) > 240
    assert set(counts) - {"00", "11"}, "device noise gives some 01 and 10"


def test_a_failed_run_is_an_error_not_a_result(service: Service) -> None:
    from qledger import InvalidRequestError

    wide = QuantumCircuit(64)
    wide.h(range(64))
    wide.measure_all()
    with as_client(service) as client, pytest.raises(InvalidRequestError) as refused:
        LedgerSampler(client, "aer_ideal", seed=SEED).run([(wide,)]).result()
    assert refused.value.field is not None and refused.value.field.startswith("workflow.")


def estimator_usage(estimator: BaseEstimatorV2) -> list[PrimitiveResult]:  # type: ignore[type-arg]
    """Qiskit's documented EstimatorV2 usage: (circuit, observables, parameter values[, precision]),
    with broadcasting between observables and parameter values."""
    sweep, _ = circuits()
    sweep = sweep.remove_final_measurements(inplace=False)
    observables = [[SparsePauliOp.from_list([("ZZI", 1.0), ("XIX", 0.5)])], [SparsePauliOp("IZZ")]]  # (2, 1)
    values = np.linspace(0, np.pi, 8).reshape(4, 2)  # (4,) bindings
    return [
        estimator.run([(sweep, observables, values)]).result(),  # broadcast to (2, 4), exact
        estimator.run([(sweep, SparsePauliOp("ZZZ"), values[:3], 0.02),
                       (sweep, [SparsePauliOp("XXI"), SparsePauliOp("IYY")], values[1], 0.05)]).result(),
    ]


def test_ledger_estimator_equals_aer_bit_for_bit(service: Service) -> None:
    with as_client(service) as client:
        ledger = estimator_usage(LedgerEstimator(client, "aer_ideal", seed=SEED))
    direct = estimator_usage(AerEstimator(options={"run_options": {"seed_simulator": SEED}}))
    for ours, aers in zip(ledger, direct, strict=True):
        for mine, theirs in zip(ours, aers, strict=True):
            assert mine.data.shape == theirs.data.shape
            assert np.array_equal(mine.data.evs, theirs.data.evs), (mine.data.evs, theirs.data.evs)
            assert np.array_equal(mine.data.stds, theirs.data.stds)
    assert verify_provenance(ledger[1].metadata["qledger"])
    assert not np.array_equal(ledger[1][0].data.evs, estimator_usage(
        AerEstimator(options={"run_options": {"seed_simulator": SEED + 1}}))[1][0].data.evs)  # seed matters


def test_ledger_estimator_on_a_device_model_equals_aer(service: Service) -> None:
    """A device model's noise is simulated: with the seed fixed, the same numbers as Aer's."""
    from qiskit_aer import AerSimulator
    from qiskit_ibm_runtime.fake_provider import FakeManilaV2

    sweep, _ = circuits()
    isa = transpile(sweep.remove_final_measurements(inplace=False), FakeManilaV2(), optimization_level=1,
                    seed_transpiler=3)
    observable = SparsePauliOp.from_list([("ZZI", 1.0), ("IXX", -0.5)]).apply_layout(isa.layout)
    pubs = [(isa, observable, np.linspace(0, 1, 6).reshape(3, 2), 0.01)]
    with as_client(service) as client:
        ours = LedgerEstimator(client, "fake:manila", seed=SEED).run(pubs).result()
    aers = AerEstimator.from_backend(AerSimulator.from_backend(FakeManilaV2()), options={
        "run_options": {"seed_simulator": SEED}}).run(pubs).result()
    assert np.array_equal(ours[0].data.evs, aers[0].data.evs), (ours[0].data.evs, aers[0].data.evs)
