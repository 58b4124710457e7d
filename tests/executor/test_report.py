"""Reproducibility reports from the ledger: exact, within tolerance, diverged, and what changed."""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

import pytest
from typer.testing import CliRunner

from executor.demo_workflow import BELL
from executor.report import report, run_facts, shot_noise_band
from ledger.cli import app as cli
from tests.executor.conftest import Service


def facts(service: Service, workflow: dict[str, Any]) -> dict[str, Any]:
    run_id = service.submit(workflow).run.run_id
    service.watch(run_id)
    rows = service.app.source().stream_entries(UUID(run_id), 0)  # type: ignore[attr-defined]
    return run_facts([r.state for r in rows])


def with_execute(**changes: Any) -> dict[str, Any]:
    return {**BELL, "execute": {**BELL["execute"], **changes}}


def test_verdicts_and_what_changed(service: Service) -> None:
    first, again = facts(service, BELL), facts(service, BELL)
    exact = report(first, again)["comparison"]
    assert exact["verdict"] == "reproduced exactly" and exact["changed"] == []
    assert exact["identical_transpiled_circuit"] and exact["hellinger_fidelity"] == 1.0

    reseeded = report(first, facts(service, with_execute(seed_simulator=99)))["comparison"]
    assert reseeded["verdict"] == "within tolerance" and reseeded["changed"] == ["settings"]
    assert 0 < reseeded["total_variation_distance"] <= reseeded["shot_noise_band"]

    noisy = report(first, facts(service, with_execute(backend="aer_noisy", noise_seed=7)))["comparison"]
    assert noisy["verdict"] != "reproduced exactly" and noisy["changed"] == ["backend"]

    three_qubits = facts(service, {**BELL, "circuit": {"template": "ghz", "qubits": 3}})
    diverged = report(first, three_qubits)["comparison"]
    assert diverged["verdict"] == "diverged" and "circuit" in diverged["changed"]
    assert diverged["total_variation_distance"] > diverged["shot_noise_band"]

    recorded = report(first, None)
    assert recorded["environment"]["seeds"] == {"seed_transpiler": 11, "seed_simulator": 7}
    assert recorded["environment"]["sdk"]["qiskit_aer"]


def test_shot_noise_band_shrinks_with_shots() -> None:
    small = shot_noise_band({"00": 50, "11": 50}, {"00": 50, "11": 50})
    large = shot_noise_band({"00": 5000, "11": 5000}, {"00": 5000, "11": 5000})
    assert large == pytest.approx(small / 10, rel=1e-9)


def test_cli_report(service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QLEDGER_HOME", str(service.home))
    runs = []
    for workflow in (BELL, BELL):
        run_id = service.submit(workflow).run.run_id
        service.watch(run_id)
        runs.append(run_id)
    store = service.app.store.url
    runner = CliRunner()
    md = runner.invoke(cli, ["report", runs[0], "--against", runs[1], "--store", store])
    assert md.exit_code == 0 and "**Verdict: reproduced exactly**" in md.output
    data = json.loads(runner.invoke(cli, ["report", runs[0], "--format", "json", "--store", store]).output)
    assert data["run_id"] == runs[0] and data["result"]["classical_baseline"] == {"00": 0.5, "11": 0.5}
    missing = runner.invoke(cli, ["report", runs[0], "--against", str(UUID(int=1)), "--store", store])
    assert missing.exit_code == 2
