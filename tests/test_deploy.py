"""deploy/ is checked as far as this machine allows (no Docker engine here)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import typer
import yaml
from typer.testing import CliRunner

from qledger.cli import app as cli

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def test_compose_commands_are_real_qledger_commands() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"db", "init", "executor"} <= set(services)
    assert services["executor"]["deploy"]["replicas"] >= 2
    for name in ("init", "ledger", "executor"):
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


def _options_are_real(command: list[str]) -> None:
    """Every --option of a qledger command line is one the CLI has."""
    words = command[1:] if command[0] == "qledger" else command
    help_text = CliRunner().invoke(cli, [words[0], "--help"], terminal_width=200).output
    options = [w for w in words if w.startswith("--")]
    assert options and all(option in help_text for option in options), (words[0], options)


def test_compose_has_ledger_replicas_prometheus_grafana() -> None:
    services = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    assert {"db", "init", "ledger", "executor", "prometheus", "grafana"} <= set(services)
    for name in ("ledger", "executor"):
        _options_are_real(services[name]["command"])
        _options_are_real(services[name]["healthcheck"]["test"][1:])
        command = services[name]["command"]
        port = int(command[command.index("--metrics-port") + 1])
        scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
        sd = scrape["scrape_configs"][0]["dns_sd_configs"][0]
        assert name in sd["names"] and sd["port"] == port


def exported_metric_names() -> set[str]:
    from qledger.ops.metrics import ExecutorMetrics

    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"),
                "gauge": ("",)}
    return {family.name + suffix for family in ExecutorMetrics().registry.collect()
            for suffix in suffixes.get(family.type, ("",))}


def test_grafana_dashboard_queries_only_metrics_we_export() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "qledger.json").read_text())
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == ["Submission and queue", "Transpilation", "Execution and backends",
                    "Ledger and projections"]
    exported = exported_metric_names()
    used = {name for p in dashboard["panels"] for t in p.get("targets", [])
            for name in re.findall(r"qledger_[a-z_]+", t["expr"])}
    assert used and used <= exported, used - exported
    assert {"qledger_projection_lag_entries", "qledger_circuit_breaker_open", "qledger_shots_total"} <= used
    provisioning = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml"
    source = yaml.safe_load(provisioning.read_text())
    uids = {d["uid"] for d in source["datasources"]}
    assert {p["datasource"]["uid"] for p in dashboard["panels"] if "datasource" in p} <= uids


def test_kubernetes_manifests() -> None:
    documents = [d for path in sorted((DEPLOY / "k8s").glob("*.yaml"))
                 for d in yaml.safe_load_all(path.read_text()) if d]
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in documents}
    deployment = by_kind[("Deployment", "qledger-executor")]
    assert deployment["spec"]["replicas"] >= 2
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    for probe in ("readinessProbe", "livenessProbe"):
        _options_are_real(container[probe]["exec"]["command"])
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert "secret" in volumes["keys"] and volumes["keys"]["secret"]["defaultMode"] == 0o600
    job = by_kind[("Job", "qledger-init")]
    _options_are_real(["qledger", *job["spec"]["template"]["spec"]["containers"][0]["args"]])
    # Every setting in the ConfigMap is one `qledger serve` reads from the environment.
    config = by_kind[("ConfigMap", "qledger-config")]["data"]
    serve = typer.main.get_command(cli).commands["serve"]  # type: ignore[attr-defined]
    read = {p.envvar for p in serve.params if p.envvar} | {"QLEDGER_STORE", "QLEDGER_HOME"}
    assert set(config) <= read, set(config) - read

