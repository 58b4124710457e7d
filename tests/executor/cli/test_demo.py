"""The README's main job, and the Bell workflow's determinism on real Qiskit Aer."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from typer.testing import CliRunner

from qledger.cli import app as cli
from qledger.ledger.app import DEFAULT_ORIGIN, LedgerApp
from qledger.runs.backends import BackendCatalog
from qledger.runs.breaker import BreakerBoard
from qledger.runs.pipeline import ExecutionContext, run_steps
from qledger.runs.reference_workflows import BELL
from qledger.runs.run import Run
from qledger.runs.workflow import parse_workflow


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["demo", "--workdir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    # 12, plus three governance entries: its creation and demo-client's two role grants
    assert "verify store: OK, 15 entries" in result.output
    assert "inclusion of the last entry: proven" in result.output
    assert "lineage bundle" in result.output and ": VALID offline (13 entries" in result.output
    assert "verify exported log" in result.output and result.output.count(": OK") == 2
    # The run reloads from the very envelopes that were verified.
    app = LedgerApp(f"sqlite:///{tmp_path / 'demo.db'}")
    runs = [n for n in app.recorder.select_notifications(start=None, limit=100)
            if n.topic.endswith("Run.Submitted")]
    run = app.repository.get(runs[0].originator_id)
    assert isinstance(run, Run) and run.status == "completed"
    # Its own log: an origin no other ledger has, as `qledger init` gives one.
    origin = app.require_origin()
    assert origin.startswith("qledger.local/") and origin != DEFAULT_ORIGIN
    assert run.steps == ["data_preparation", "circuit_synthesis", "transpilation", "execution",
                         "post_processing", "report"]
    # It ends with the run's counts and the commands to explore what it kept; each one works as
    # printed, in a shell, and finds the demo's run.
    said = result.output.split("\ncounts (", 1)[1].splitlines()[0]
    shots = BELL["execute"]["shots"]
    assert said.startswith(f"{shots} shots on aer_ideal): ")
    counts = json.loads(said.split("): ", 1)[1])
    assert set(counts) <= {"00", "11"} and sum(counts.values()) == shots
    commands = result.output.split("explore them with:\n", 1)[1].splitlines()
    assert len(commands) == 6 and all(line.startswith("  ") for line in commands)
    for command in commands[1:]:
        done = subprocess.run(["bash", "-c", f"set -euo pipefail; {commands[0].strip()}; {command.strip()}"],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (command, done.stderr)
        found = str(run.id) in done.stdout or "OK" in done.stdout or "VALID" in done.stdout
        assert found, (command, done.stdout)


def test_same_seeds_give_identical_counts_and_circuit_hashes() -> None:
    def run(seed_simulator: int) -> dict[str, dict[str, object]]:
        body = {**BELL, "execute": {**BELL["execute"], "shots": 1000, "seed_simulator": seed_simulator}}
        return dict(run_steps(parse_workflow(body), ExecutionContext(BackendCatalog(), BreakerBoard())))

    first, second, other = run(5), run(5), run(6)
    assert first["execution"]["counts"] == second["execution"]["counts"]
    assert first["transpilation"]["qasm3_sha256"] == second["transpilation"]["qasm3_sha256"]
    assert first["execution"]["counts"] != other["execution"]["counts"]
    assert set(first["execution"]["counts"]) <= {"00", "11"}  # ideal Bell state
