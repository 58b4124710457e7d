"""deploy/ is checked as far as this machine allows (no Docker engine here)."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from ledger.cli import app as cli

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def test_compose_commands_are_real_qledger_commands() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"db", "init", "executor"} <= set(services)
    assert services["executor"]["deploy"]["replicas"] >= 2
    for name in ("init", "executor"):
        command = services[name]["command"]
        options = [c for c in command if c.startswith("--")]
        help_text = CliRunner().invoke(cli, [command[0], "--help"], terminal_width=200).output
        assert all(option in help_text for option in options), (name, options)
        assert services[name]["build"]["dockerfile"] == "deploy/Dockerfile"


def test_dockerfile_copies_what_exists() -> None:
    root = DEPLOY.parent
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (root / source).exists(), source
