"""deploy/'s files checked against the code and against each other; tests/deploy/ runs them in Podman."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import typer
import yaml
from typer.testing import CliRunner

from qledger.cli import app as cli
from tests.deploy import readme_steps

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
        if line.startswith("COPY ") and not line.startswith("COPY --from="):  # not another stage's
            for source in line.split()[1:-1]:
                assert (root / source).exists(), source


def _options_are_real(command: list[str]) -> None:
    """Every --option of a qledger command line is one the CLI has."""
    words = command[1:] if command[0] == "qledger" else command
    leading = [w for w in words[:next((i for i, w in enumerate(words) if w.startswith("--")), len(words))]]
    help_text = CliRunner().invoke(cli, [*leading, "--help"], terminal_width=200).output
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



def _readme_says(text: str) -> bool:
    """TEXT's first line within a line of deploy/README.md, its other lines the lines after it
    (indentation aside)."""
    readme = [line.strip() for line in (DEPLOY / "README.md").read_text().splitlines()]
    first, *rest = [line.strip() for line in text.splitlines()]
    return any(first in line and readme[i + 1:i + 1 + len(rest)] == rest for i, line in enumerate(readme))


def test_the_container_test_runs_the_readmes_commands() -> None:
    steps = readme_steps
    for text in (steps.PASSWORDS, steps.OWNERS, steps.OWNERS_ROOTLESS, steps.PSQL, steps.HAND_OVER_KEY):
        assert _readme_says(text), text
    for command in (steps.KEYS_ADD_EXECUTOR, steps.KEYS_ADD_USER, steps.GRANT_USER, steps.VERIFY):
        assert _readme_says(f"{steps.INIT_SERVICE} {shlex.join(command)}"), command
        _options_are_real(command)
    for command in (steps.HEALTH, steps.SUBMIT, steps.RUNS_SHOW):
        assert _readme_says(shlex.join(["qledger", *command])), command
        _options_are_real(command)
    # The README's Secrets are the test's, and every Secret the manifests mount is one of them.
    made: dict[str, dict[str, str]] = {}
    for line in (DEPLOY / "README.md").read_text().splitlines():
        if line.strip().startswith("kubectl create secret generic"):
            words = shlex.split(line)
            files = [w.removeprefix("--from-file=") for w in words if w.startswith("--from-file=")]
            made[words[4]] = {(f.split("=")[0] if "=" in f else Path(f).name): f.split("=")[-1]
                              for f in files}
    assert made == steps.K8S_SECRETS
    mounted = {v["secret"]["secretName"] for pod in _pods() for v in pod["volumes"] if "secret" in v}
    assert mounted <= set(made), mounted - set(made)


def _pods() -> list[dict[str, Any]]:
    return [d["spec"]["template"]["spec"] for path in sorted((DEPLOY / "k8s").glob("*.yaml"))
            for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] in ("Deployment", "Job")]


def test_the_image_runs_as_uid_999() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "ARG BASE=python:3.11-slim" in dockerfile and "FROM ${BASE}" in dockerfile
    assert "useradd --system --uid 999 --gid 999" in dockerfile
    assert [line for line in dockerfile.splitlines() if line.startswith("USER ")] == ["USER 999:999"]


def test_compose_hands_each_container_only_its_own_secrets() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    init = services["init"]
    assert init["environment"]["PGPASSFILE"] == "/run/secrets/admin_pgpass"
    assert init["secrets"] == ["admin_pgpass"]
    assert init["volumes"] == ["./keys:/var/lib/qledger/keys"]
    for name in ("ledger", "executor"):
        service = services[name]
        assert service["environment"]["PGPASSFILE"] == "/run/secrets/pgpass"
        assert "--store" in service["command"] and "qledger_service@" in service["command"][2]
        assert not any(v.startswith("./keys") for v in service["volumes"]), "root.key stays with init"
        targets = {s["target"]: compose["secrets"][s["source"]]["file"]
                   for s in service["secrets"] if isinstance(s, dict)}
        assert targets == {"/var/lib/qledger/keys/executor-1.key": "./keys/executor-1.key",
                           "/var/lib/qledger/keys/checkpointer.key": "./keys/checkpointer.key"}
        assert "admin_pgpass" not in service["secrets"]


def test_kubernetes_pods_copy_key_files_and_pgpass_to_files_of_their_own() -> None:
    config = next(d for d in yaml.safe_load_all((DEPLOY / "k8s" / "config.yaml").read_text())
                  if d and d["kind"] == "ConfigMap")["data"]
    for pod in _pods():
        assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 999, "runAsGroup": 999,
                                          "fsGroup": 999}
        volumes = {v["name"]: v for v in pod["volumes"]}
        private = {name for name, v in volumes.items()
                   if "secret" in v and re.search("keys|pgpass", v["secret"]["secretName"])}
        (copy,) = pod["initContainers"]
        assert copy["command"][:2] == ["sh", "-c"] and "install -m 0600" in copy["command"][2]
        home = {m["name"] for m in copy["volumeMounts"] if m["mountPath"] == config["QLEDGER_HOME"]}
        assert home and all("emptyDir" in volumes[name] for name in home)
        assert private == {m["name"] for m in copy["volumeMounts"]} - home
        for container in pod["containers"]:
            mounted = {m["name"] for m in container["volumeMounts"]}
            assert not mounted & private, "key files and pgpass only through the copies"
            env = {e["name"]: e["value"] for e in container.get("env", [])}
            assert env["PGPASSFILE"] == f"{config['QLEDGER_HOME']}/pgpass"
            assert f"{env['PGPASSFILE']}" in copy["command"][2]
