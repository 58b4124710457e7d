"""deploy/README.md's steps give a working install, shown in real containers.

The image is built from deploy/Dockerfile (tests/deploy/podman.py: Podman, no registry); the
Compose steps are followed with ``podman run``, each service run as compose.yaml defines it (its
command, environment, volumes and secrets, which Compose too hands over as bind mounts), on the
host's network, against a PostgreSQL server of the test's own that asks the qledger roles for
their passwords; then the README's checks run from the host.  The Kubernetes pods run from
deploy/k8s/ with their Secrets laid out as the kubelet lays them out with ``fsGroup``.  The
commands quoted from the README are in tests/deploy/readme_steps.py; only ``db:5432`` and the
listening ports are this machine's.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from psycopg import sql

from tests.conftest import Cluster
from tests.deploy import readme_steps as readme
from tests.deploy.podman import (
    DEPLOY,
    Podman,
    compose_run_args,
    lay_out_pod_volumes,
    pod_container_args,
    rootless,
)
from tests.executor.rpc.test_tls import issue

pytestmark = [pytest.mark.container, pytest.mark.postgres]

SERVE_WAIT = 120.0  # seconds for a server to answer its first health check


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Served:
    name: str
    port: int
    metrics_port: int


@dataclass
class Install:
    """The admin's deploy/ directory (keys/, tls/, secrets/), its database, and its user alice."""

    podman: Podman
    image: str
    project: Path
    compose: dict[str, Any]
    pg: Cluster
    names: str  # every container of this install is named NAMES-...
    alice_home: Path  # alice's home: .qledger/keys/alice.key
    alice_files: Path  # where alice runs qledger: ca.pem, alice.pem, alice-tls.key
    service_pw: str

    def local(self, text: str) -> str:
        """The README's database, db:5432, is this test's server."""
        return text.replace("db:5432", f"db:{self.pg.port}")

    def shell(self, text: str, **env: str) -> subprocess.CompletedProcess[str]:
        """A README shell line, in the admin's deploy/."""
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", text], cwd=self.project,
                                env={**self.podman.env(), **env}, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, (text, result.stdout, result.stderr)
        return result

    def container(self, service: str, *command: str, name: str = "", detach: bool = False,
                  entrypoint: str | None = None, check: bool = True,
                  timeout: float = 240.0) -> subprocess.CompletedProcess[str]:
        """``docker compose run --rm SERVICE COMMAND`` (or ``up -d`` with DETACH), in Podman."""
        spec = self.compose["services"][service]
        args = ["run", "--name", name or self.name(service), "--network", "host",
                "--add-host", "db:127.0.0.1", "-d" if detach else "--rm",
                *compose_run_args(spec, self.compose, self.project)]
        if entrypoint:
            args += ["--entrypoint", entrypoint]
        words = command or tuple(spec["command"])
        return self.podman.run(*args, self.image, *map(self.local, words), check=check, timeout=timeout)

    def name(self, what: str) -> str:
        return f"{self.names}-{what}-{uuid.uuid4().hex[:6]}"

    def serve_command(self, service: str, served: Served) -> list[str]:
        """SERVICE's serve command from compose.yaml, on SERVED's loopback ports."""
        command = list(self.compose["services"][service]["command"])
        command[command.index("--listen") + 1] = f"127.0.0.1:{served.port}"
        command[command.index("--metrics-port") + 1] = str(served.metrics_port)
        command[command.index("--metrics-address") + 1] = "127.0.0.1"
        return command

    def serve(self, service: str) -> Served:
        """``docker compose up -d SERVICE``."""
        served = Served(self.name(service), free_port(), free_port())
        self.container(service, *self.serve_command(service, served), name=served.name, detach=True)
        return served

    def qledger(self, *args: str, check: bool = True,
                timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """alice's qledger, on the host."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("QLEDGER_")}
        env["QLEDGER_HOME"] = str(self.alice_home / ".qledger")
        result = subprocess.run([sys.executable, "-m", "qledger.cli", *args], cwd=self.alice_files, env=env,
                                capture_output=True, text=True, timeout=timeout)
        if check:
            assert result.returncode == 0, (args, result.stdout, result.stderr)
        return result

    def wait_serving(self, served: Served) -> None:
        """Until alice's ``qledger health`` says SERVING; bounded, and over when the container ends."""
        deadline = time.monotonic() + SERVE_WAIT
        while True:
            health = self.qledger(*client(readme.HEALTH, served.port), check=False, timeout=30)
            if health.returncode == 0 and health.stdout.strip() == "SERVING":
                return
            running = self.podman.run("inspect", "-f", "{{.State.Running}}", served.name, check=False)
            if running.stdout.strip() != "true" or time.monotonic() > deadline:
                logs = self.podman.run("logs", served.name, check=False)
                raise AssertionError(f"{served.name} is not serving (running: {running.stdout.strip()}): "
                                     f"{health.stdout}{health.stderr}\n{logs.stdout[-3000:]}{logs.stderr[-3000:]}")
            time.sleep(1)


def client(words: list[str], port: int, run_id: str = "") -> list[str]:
    """A "Check your install" command against 127.0.0.1:PORT.  The server's certificate names
    localhost, so --server-name says so (as the README tells for an address it does not name)."""
    changed = [w.replace("HOST:50050", f"127.0.0.1:{port}").replace("RUN", run_id or "RUN") for w in words]
    return [*changed, "--server-name", "localhost"]


def write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.write_bytes(data)
    path.chmod(mode)


@pytest.fixture(scope="module")
def installed(podman: Podman, qledger_image: str, password_pg: Cluster,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Install]:
    """The Compose steps 2 to 8 of deploy/README.md (step 1, the image, is ``qledger_image``)."""
    project = tmp_path_factory.mktemp("deploy")
    alice_home = tmp_path_factory.mktemp("alice")
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    install = Install(podman, qledger_image, project, compose, password_pg,
                      f"qledger-test-{uuid.uuid4().hex[:8]}", alice_home, alice_home / "files", "")
    install.alice_files.mkdir()
    try:
        # Step 2: passwords and pgpass files.
        install.shell(install.local(readme.PASSWORDS))
        admin_pw = (project / "secrets" / "db_admin_password").read_text().strip()
        install.service_pw = (project / "secrets" / "pgpass").read_text().strip().rsplit(":", 1)[1]

        # Step 3: TLS files; and alice's client certificate, signed by the client CA.
        server_ca, _, server_ca_name, server_ca_key = issue("qledger server CA", None, ca=True)
        client_ca, _, client_ca_name, client_ca_key = issue("qledger client CA", None, ca=True)
        server_pem, server_key, _, _ = issue("localhost", (server_ca_name, server_ca_key))
        probe_pem, probe_key, _, _ = issue("probe", (client_ca_name, client_ca_key))
        alice_pem, alice_key, _, _ = issue("alice", (client_ca_name, client_ca_key))
        tls = project / "tls"
        for name, data in (("ca.pem", server_ca), ("client-ca.pem", client_ca), ("server.pem", server_pem),
                           ("server.key", server_key), ("probe.pem", probe_pem), ("probe.key", probe_key)):
            write(tls / name, data)
        write(install.alice_files / "ca.pem", server_ca)
        write(install.alice_files / "alice.pem", alice_pem)
        write(install.alice_files / "alice-tls.key", alice_key, 0o600)

        # Step 4: owners and modes, as uid 999.
        if rootless():
            rootless_chown = readme.OWNERS_ROOTLESS.replace("podman", podman.shell_command())
            install.shell(readme.OWNERS.replace("sudo chown -R 999:999 keys tls secrets", rootless_chown))
        else:
            install.shell(readme.OWNERS.replace("sudo ", ""))
        if not rootless():
            private = [tls / "server.key", tls / "probe.key", *(project / "secrets").iterdir()]
            assert {(p.stat().st_uid, p.stat().st_mode & 0o777) for p in private} == {(999, 0o600)}

        # Step 5: the database and its owner, as PostgreSQL's image makes them from POSTGRES_DB,
        # POSTGRES_USER and the password file; then the README's psql for the service role.
        with psycopg.connect(password_pg.url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("CREATE ROLE qledger_admin LOGIN CREATEROLE PASSWORD {}")
                         .format(sql.Literal(admin_pw)))
            conn.execute("CREATE DATABASE qledger OWNER qledger_admin")
        psql = Path(password_pg.pg_ctl).parent / "psql"
        install.shell(readme.PSQL.replace("psql", f"{psql if psql.exists() else 'psql'} -h 127.0.0.1 "
                                          f"-p {password_pg.port}", 1),
                      service_pw=install.service_pw, PGPASSWORD=admin_pw)

        # Step 6: init, as the database owner (compose.yaml's init service and command).
        initialised = install.container("init")
        assert initialised.stdout.startswith("initialised: "), initialised.stdout

        # The mistake this README's step 7 is against: the executor's key made and registered
        # in a local SQLite file only (`qledger keys add` without --store).  `qledger serve`
        # refuses it, with the reason.
        local_only = "cd /tmp && qledger init && qledger keys add executor-1 --purpose executor"
        install.container("init", "-c", local_only, entrypoint="sh")
        command = install.serve_command("executor", Served("", free_port(), free_port()))
        refused = install.container("executor", *command, check=False, timeout=120)
        said = refused.stdout + refused.stderr
        assert refused.returncode != 0, said
        assert "the executor key 'executor-1'" in said, said
        assert f"is not registered in {install.local(readme.SERVICE_STORE)}" in said, said

        # Step 7: the executor's key (the same file) registered in the deployed database.
        install.container("init", *readme.KEYS_ADD_EXECUTOR)

        # Step 8: alice's key and role; her key file handed to her, hers and 0600.
        install.container("init", *readme.KEYS_ADD_USER)
        install.container("init", *readme.GRANT_USER)
        cat = "cat" if not rootless() else f"{podman.shell_command()} unshare cat"
        install.shell(readme.HAND_OVER_KEY.replace("sudo cat", cat), HOME=str(alice_home))
        alice_key_file = alice_home / ".qledger" / "keys" / "alice.key"
        assert (alice_key_file.stat().st_uid, alice_key_file.stat().st_mode & 0o777) == (os.geteuid(), 0o600)
        yield install
    finally:
        podman.remove_containers(install.names)
        if rootless():  # give the subordinate uid's files back, for the temporary directory's removal
            podman.chown("0:0", project)


def test_compose_steps_give_a_working_install(installed: Install) -> None:
    podman = installed.podman
    # Step 9, `docker compose up -d`: the ledger service (no workers) and an executor, each with
    # compose.yaml's command, environment, secrets and volumes.
    ledger, executor = installed.serve("ledger"), installed.serve("executor")
    for served in (ledger, executor):
        installed.wait_serving(served)
        # Its health check, in its container, as uid 999 with the probe's certificate.
        assert podman.run("exec", served.name, "id", "-u").stdout.strip() == "999"
        probe = installed.compose["services"]["ledger"]["healthcheck"]["test"][1:]
        probe = [w.replace("localhost:50051", f"localhost:{served.port}") for w in probe]
        assert podman.run("exec", served.name, *probe).stdout.strip() == "SERVING"

    # Check your install, from the host as alice: a run submitted to the ledger service, run by
    # the executor, completed with its counts.
    assert installed.qledger(*client(readme.HEALTH, ledger.port)).stdout.strip() == "SERVING"
    submitted = installed.qledger(*client(readme.SUBMIT, ledger.port), timeout=300).stdout
    ended = re.search(r"^run (\S+): completed$", submitted, re.M)
    assert ended, submitted
    shown = installed.qledger(*client(readme.RUNS_SHOW, ledger.port, ended.group(1))).stdout
    counts = re.search(r"^counts:\s+(\{.*\})\s+\((\d+) shots\)", shown, re.M)
    assert counts, shown
    outcomes = json.loads(counts.group(1))
    assert set(outcomes) <= {"00", "11"} and sum(outcomes.values()) == int(counts.group(2)) == 2048, shown

    # Prometheus's view: the executor's metrics endpoint counted the shots.
    with urllib.request.urlopen(f"http://127.0.0.1:{executor.metrics_port}/metrics", timeout=10) as reply:
        metrics = reply.read().decode()
    assert re.search(r"^qledger_shots_total\S* [1-9]", metrics, re.M), metrics[:2000]

    # The admin's check: the whole ledger verifies, in the init container, and from the host.
    verified = installed.container("init", *readme.VERIFY)
    assert verified.stdout.startswith("OK: "), verified.stdout
    host_url = f"postgresql://postgres@127.0.0.1:{installed.pg.port}/qledger"
    assert installed.qledger("verify", "--store", host_url).stdout.startswith("OK: ")


def test_kubernetes_pods_read_their_secrets_as_uid_999(installed: Install, tmp_path: Path) -> None:
    """deploy/k8s/'s init Job and executor pod, their Secrets made as the README's Kubernetes
    step 3 makes them and laid out as the kubelet does with fsGroup (root's files, group 999,
    mode 0640): the init containers' copies are what qledger and libpq accept."""
    podman = installed.podman
    documents = {(d["kind"], d["metadata"]["name"]): d for path in sorted((DEPLOY / "k8s").glob("*.yaml"))
                 for d in yaml.safe_load_all(path.read_text()) if d}
    secrets = {name: {key: podman.read_as_admin(installed.project / path) for key, path in files.items()}
               for name, files in readme.K8S_SECRETS.items()}
    # pgpass lines with `*` for the host (Kubernetes step 1), here for this test's port.
    for name, role in (("qledger-pgpass", "qledger_service"), ("qledger-admin-pgpass", "qledger_admin")):
        password = secrets[name]["pgpass"].decode().strip().rsplit(":", 1)[1]
        secrets[name]["pgpass"] = f"*:{installed.pg.port}:qledger:{role}:{password}\n".encode()
    port, metrics_port = free_port(), free_port()
    config = dict(documents[("ConfigMap", "qledger-config")]["data"])
    config |= {"QLEDGER_STORE": config["QLEDGER_STORE"].replace(":5432/", f":{installed.pg.port}/"),
               "QLEDGER_LISTEN": f"127.0.0.1:{port}", "QLEDGER_METRICS_PORT": str(metrics_port),
               "QLEDGER_METRICS_ADDRESS": "127.0.0.1"}

    def run_pod(kind: str, name: str) -> str:
        """The pod's init containers, then its container: a Job's to its end (its output), a
        Deployment's left running (its name)."""
        pod = documents[(kind, name)]["spec"]["template"]["spec"]
        volumes = lay_out_pod_volumes(podman, pod, secrets, tmp_path / name)
        (main,) = pod["containers"]
        outcome = ""
        for container in [*pod["initContainers"], main]:
            args, env = pod_container_args(pod, container, volumes, {"qledger-config": config})
            words = [w.replace(":5432/", f":{installed.pg.port}/") for w in container.get("args") or []]
            keep = kind == "Deployment" and container is main
            container_name = installed.name(container["name"])
            ran = podman.run("run", "--name", container_name, "--network", "host",
                             "--add-host", "qledger-db:127.0.0.1", "-d" if keep else "--rm", *args,
                             *[f"--env={k}={v}" for k, v in env.items()], installed.image, *words,
                             timeout=240)
            outcome = container_name if keep else ran.stdout
        return outcome

    # The Job again: `qledger init` is safe to run twice.
    assert run_pod("Job", "qledger-init").startswith("already initialised: ")
    # A replica of the Deployment, configured by the ConfigMap.
    pod_name = run_pod("Deployment", "qledger-executor")
    installed.wait_serving(Served(pod_name, port, metrics_port))
    assert podman.run("exec", pod_name, "stat", "-c", "%a %u", "/var/lib/qledger/keys/executor-1.key",
                      "/var/lib/qledger/pgpass").stdout.split("\n")[:2] == ["600 999", "600 999"]
    container = documents[("Deployment", "qledger-executor")]["spec"]["template"]["spec"]["containers"][0]
    for probe in ("readinessProbe", "livenessProbe"):
        command = [w.replace("localhost:50051", f"localhost:{port}")
                   for w in container[probe]["exec"]["command"]]
        assert podman.run("exec", pod_name, *command).stdout.strip() == "SERVING"
