"""Reproducibility reports from the ledger: exact, within tolerance, diverged, and what changed."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from typer.testing import CliRunner

from qledger.cli import app as cli
from qledger.ledger import dsse
from qledger.provenance.report import report, run_facts, shot_noise_band, to_markdown
from qledger.runs.reference_workflows import BELL
from tests.executor.conftest import Service, ServiceFactory


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

    # Two unrelated workflows are said to be so before anything else.
    ghz = facts(service, {**BELL, "name": "ghz-3", "circuit": {"template": "ghz", "qubits": 3}})
    unrelated = report(first, ghz)["comparison"]
    assert unrelated["verdict"].startswith("different workflows ('bell-sampling' and 'ghz-3')")
    assert unrelated["changed"][0] == "workflow" and "circuit" in unrelated["changed"]
    assert "different workflows" in to_markdown(report(first, ghz))

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


def test_html_report_after_rerun_over_the_server(service: Service, monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    """`report --rerun` replays the run on the server, then writes one self-contained HTML file."""
    monkeypatch.setenv("QLEDGER_HOME", str(service.home))
    run_id = service.submit(BELL).run.run_id
    service.watch(run_id)
    out = tmp_path / "report.html"
    result = CliRunner().invoke(cli, ["report", run_id, "--rerun", "--server", service.running.address,
                                      "--as", "alice", "--format", "html", "-o", str(out)])
    assert result.exit_code == 0, result.output
    page = out.read_text()
    parser = _Elements()
    parser.feed(page)
    # Self-contained: nothing is fetched; two pictures: the distributions and the lineage.
    assert not any(attr in ("src", "href") for _, attrs in parser.elements for attr, _ in attrs)
    assert [tag for tag, _ in parser.elements].count("svg") == 2
    data = json.loads(parser.report_data)
    rerun = data["comparison"]["runs"][1]
    assert data["run_id"] == run_id and rerun != run_id
    assert data["comparison"]["verdict"] == "reproduced exactly"
    assert set(data["counts"]) == {run_id, rerun} and data["counts"][run_id] == data["counts"][rerun]
    # The rerun is a run of its own in the ledger, naming the run it replays.
    submitted = service.watch(rerun)[0]
    assert json.loads(dsse.parse(submitted.envelope).payload)["payload"]["rerun_of"] == run_id
    for bars in (f"run {run_id[:8]} 00:", f"run {rerun[:8]} 11:"):
        assert bars in page
    refused = CliRunner().invoke(cli, ["report", run_id, "--rerun", "--store", service.app.store.url])
    assert refused.exit_code == 2 and "--rerun needs --server" in refused.output


class _Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.report_data = ""
        self._in_data = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, attrs))
        self._in_data = tag == "script" and ("id", "report-data") in attrs

    def handle_data(self, data: str) -> None:
        if self._in_data:
            self.report_data += data

    def handle_endtag(self, tag: str) -> None:
        self._in_data = False


@pytest.mark.parametrize("output", ["md", "json", "html"])
def test_a_report_renders_for_a_run_the_executor_lost(service_factory: ServiceFactory, output: str,
                                                     monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No attempt left: the run fails with ExecutorLost before any step is recorded."""
    service = service_factory(max_attempts=0)
    monkeypatch.setenv("QLEDGER_HOME", str(service.home))
    run_id = service.submit(BELL).run.run_id
    assert service.watch(run_id)[-1].event_type.endswith("Failed")
    assert "ExecutorLost" in service.run(run_id).error
    out = tmp_path / "report.out"
    result = CliRunner().invoke(cli, ["report", run_id, "--format", output, "--store", service.app.store.url,
                                      *(["-o", str(out)] if output == "html" else [])])
    assert result.exit_code == 0, result.output
    shown = out.read_text() if output == "html" else result.output
    assert run_id in shown and "ExecutorLost" in shown
