"""`qledger serve` and `qledger submit --wait` as separate processes over loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from typer.testing import CliRunner

from qledger.cli import app as cli
from qledger.ledger.app import LedgerApp
from qledger.ledger.keys import KeyStore
from qledger.ledger.verify import verify
from qledger.runs.reference_workflows import BELL, WORKFLOWS
from tests.conftest import ONLY_SQLITE
from tests.executor.conftest import Service
from tests.ledger.helpers import make_ledger

REPO = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def qledger(home: Path, *args: str, timeout: float = 120,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qledger.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO,
                          env={**os.environ, "QLEDGER_HOME": str(home), **(env or {})})


def in_process(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The command run in this process (no interpreter start-up: the suite's time budget), with
    what a subprocess would give: exit code, stdout, stderr."""
    result = CliRunner().invoke(cli, list(args), env={"QLEDGER_HOME": str(home), **(env or {})})
    return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, result.stderr)


def test_serve_then_submit_and_wait(sqlite_store_url: str, qledger_home: Path) -> None:
    app, _ = make_ledger(sqlite_store_url, qledger_home)
    executor_key = KeyStore(qledger_home).load_or_create("executor-1")
    app.register_key("root", "executor-1", executor_key.public, "executor")
    granted = in_process(qledger_home, "roles", "grant", "alice", "submitter", "--store", sqlite_store_url)
    assert granted.returncode == 0, granted.stderr
    KeyStore(qledger_home).load_or_create("bob")
    assert in_process(qledger_home, "keys", "add", "bob", "--store", sqlite_store_url).returncode == 0
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "qledger.cli", "serve", "--plaintext", "--store", sqlite_store_url,
         "--listen", f"127.0.0.1:{port}"],
        cwd=REPO, env={**os.environ, "QLEDGER_HOME": str(qledger_home)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        assert server.stdout.readline().startswith(f"serving qledger.v1 on 127.0.0.1:{port}")
        done = in_process(qledger_home, "submit", str(WORKFLOWS / "bell.json"), "--server",
                          f"127.0.0.1:{port}", "--as", "alice", "--wait")
        assert done.returncode == 0, done.stderr
        assert "StepRecorded" in done.stdout and done.stdout.strip().endswith("completed")
        run_id = done.stdout.strip().splitlines()[-1].split()[1].rstrip(":")
        server_flags = ["--server", f"127.0.0.1:{port}", "--as", "alice"]
        # Shown by a unique prefix, with its results; as JSON on request.
        shown = in_process(qledger_home, "runs", "show", run_id[:8], *server_flags)
        assert shown.returncode == 0, shown.stderr
        assert f"run id:       {run_id}" in shown.stdout and "status:       completed" in shown.stdout
        counts_line = next(line for line in shown.stdout.splitlines() if line.startswith("counts:"))
        counts = json.loads(counts_line.split(None, 1)[1].rsplit("  (", 1)[0])
        assert set(counts) <= {"00", "11"} and sum(counts.values()) == BELL["execute"]["shots"]
        as_json = json.loads(in_process(qledger_home, "runs", "show", run_id, "--format", "json",
                                     *server_flags).stdout)
        assert as_json["results"]["counts"] == counts and as_json["submitted_at"] <= as_json["updated_at"]
        assert in_process(qledger_home, "runs", "show", "zz", *server_flags).returncode == 2
        watched = in_process(qledger_home, "runs", "watch", run_id[:8], *server_flags)
        assert watched.returncode == 0 and watched.stdout.count("StepRecorded") == 6
        rerun = in_process(qledger_home, "runs", "rerun", run_id, *server_flags)
        assert rerun.returncode == 0 and rerun.stdout.strip().endswith("completed"), rerun.stderr
        cancelled = in_process(qledger_home, "runs", "cancel", run_id, "--reason", "too late", *server_flags)
        assert cancelled.returncode == 0 and "completed" in cancelled.stdout  # an ended run stays as it ended
        # The same workflow in YAML is the same definition: same hash, so it is accepted.
        done = in_process(qledger_home, "submit", str(WORKFLOWS / "ghz_noisy.yaml"), "--server",
                          f"127.0.0.1:{port}", "--as", "alice", "--wait", "--idempotency-key", "ghz-1")
        assert done.returncode == 0 and done.stdout.strip().endswith("completed"), done.stderr
        listed = in_process(qledger_home, "runs", "list", *server_flags)
        header, *lines = listed.stdout.strip().splitlines()
        assert header.split() == ["RUN", "STATUS", "WORKFLOW", "SUBMITTER", "SUBMITTED"]
        assert len(lines) == 3 and "ghz-noisy" in lines[0] and lines[2].startswith(run_id)
        assert lines[2].split()[-2] == as_json["submitted_at"][:10]  # the date, then the time
        listed_json = in_process(qledger_home, "runs", "list", "--format", "json", *server_flags)
        assert len(json.loads(listed_json.stdout)) == 3
        missing = in_process(qledger_home, "runs", "show", "x", "--server", f"127.0.0.1:{port}",
                          "--as", "alice")
        assert missing.returncode == 2 and "neither a run id nor a prefix" in missing.stderr
        # A reference workflow by name, from any directory: no source checkout needed.
        by_name = subprocess.run([sys.executable, "-m", "qledger.cli", "submit", "bell", "--server",
                                  f"127.0.0.1:{port}", "--as", "alice", "--wait"], capture_output=True,
                                 text=True, timeout=120, cwd=qledger_home,
                                 env={**os.environ, "QLEDGER_HOME": str(qledger_home)})
        assert by_name.returncode == 0 and by_name.stdout.strip().endswith("completed"), by_name.stderr
        # A registered key with no role: identified, and refused (every call is authorised).
        denied = in_process(qledger_home, "runs", "show", run_id, "--server", f"127.0.0.1:{port}",
                         "--as", "bob")
        assert denied.returncode == 2 and denied.stderr.startswith("qledger: PERMISSION_DENIED")
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert server.returncode == 0
    time.sleep(0.1)
    assert verify(LedgerApp(sqlite_store_url).source()).ok


def test_submit_to_nothing_exits_2(qledger_home: Path, tmp_path: Path) -> None:
    KeyStore(qledger_home).load_or_create("client")
    done = in_process(qledger_home, "submit", str(WORKFLOWS / "bell.json"), "--server",
                      f"127.0.0.1:{free_port()}")
    assert done.returncode == 2 and done.stderr.startswith("qledger: UNAVAILABLE")


def test_health_command_against_a_live_server(service: Service) -> None:
    ok = CliRunner().invoke(cli, ["health", "--server", service.running.address])
    assert ok.exit_code == 0 and ok.output.strip() == "SERVING"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    down = CliRunner().invoke(cli, ["health", "--server", dead])
    assert down.exit_code == 2 and "UNAVAILABLE" in down.output


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    """A real OTLP/gRPC receiver on loopback that keeps what it is sent."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, dict[str, str]]] = []

    def Export(self, request: Any, context: Any) -> Any:
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                for span in scope.spans:
                    self.spans.append((span.name, {a.key: a.value.string_value for a in span.attributes}))
        return trace_service_pb2.ExportTraceServiceResponse()


def test_serve_exports_traces_over_otlp(sqlite_store_url: str, qledger_home: Path) -> None:
    app, _ = make_ledger(sqlite_store_url, qledger_home)
    executor_key = KeyStore(qledger_home).load_or_create("executor-1")
    app.register_key("root", "executor-1", executor_key.public, "executor")
    granted = qledger(qledger_home, "roles", "grant", "alice", "submitter", "--store", sqlite_store_url)
    assert granted.returncode == 0
    collector = _Collector()
    receiver = grpc.server(ThreadPoolExecutor(2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, receiver)
    otlp_port = receiver.add_insecure_port("127.0.0.1:0")
    receiver.start()
    port = free_port()
    env = {**os.environ, "QLEDGER_HOME": str(qledger_home), "OTEL_EXPORTER_OTLP_ENDPOINT":
           f"http://127.0.0.1:{otlp_port}", "OTEL_EXPORTER_OTLP_INSECURE": "true",
           "OTEL_SERVICE_NAME": "qledger-test", "QLEDGER_LOG_FORMAT": "json"}
    server = subprocess.Popen([sys.executable, "-m", "qledger.cli", "serve", "--plaintext",
                               "--store", sqlite_store_url,
                               "--listen", f"127.0.0.1:{port}"], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().startswith("serving")
        done = qledger(qledger_home, "submit", str(WORKFLOWS / "bell.json"), "--server",
                       f"127.0.0.1:{port}", "--as", "alice", "--wait")
        assert done.returncode == 0, done.stderr
        run_id = done.stdout.strip().splitlines()[-1].split()[1].rstrip(":")
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=30)
        receiver.stop(1)
    names = {name for name, _ in collector.spans}
    assert {"run", "step execution", "ledger.append", "/qledger.v1.Executor/SubmitWorkflow"} <= names
    assert any(name == "run" and attrs.get("qledger.run_id") == run_id for name, attrs in collector.spans)
    logged = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert any(line.get("run_id") == run_id for line in logged), stderr[-2000:]


def test_serve_configuration_file_environment_and_flags(sqlite_store_url: str, qledger_home: Path,
                                                         tmp_path: Path) -> None:
    app, _ = make_ledger(sqlite_store_url, qledger_home)
    executor_key = KeyStore(qledger_home).load_or_create("executor-1")
    app.register_key("root", "executor-1", executor_key.public, "executor")
    from_file, from_env = free_port(), free_port()
    config = tmp_path / "qledger.toml"
    config.write_text(f'[serve]\nlisten = "127.0.0.1:{from_file}"\nworkers = 1\nplaintext = true\n'
                      f'store = "{sqlite_store_url}"\n')

    def serving(env: dict[str, str]) -> str:
        server = subprocess.Popen([sys.executable, "-m", "qledger.cli", "serve", "--config", str(config)],
                                  cwd=REPO, env={**os.environ, "QLEDGER_HOME": str(qledger_home), **env},
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None
            return server.stdout.readline()
        finally:
            server.terminate()
            server.wait(timeout=30)

    assert f"127.0.0.1:{from_file}" in serving({})  # the file
    assert f"127.0.0.1:{from_env}" in serving({"QLEDGER_LISTEN": f"127.0.0.1:{from_env}"})  # env wins
    config.write_text('[serve]\nlisten = "127.0.0.1:1"\nseed = 7\n')
    refused = qledger(qledger_home, "serve", "--config", str(config))
    assert refused.returncode == 2 and "unknown setting(s) seed" in refused.stderr
    # Plaintext only when asked for.
    config.write_text(f'[serve]\nstore = "{sqlite_store_url}"\n')
    unasked = qledger(qledger_home, "serve", "--config", str(config))
    assert unasked.returncode == 2 and "--plaintext" in unasked.stderr


@pytest.mark.reliability
@ONLY_SQLITE  # a busy port is a busy port whatever the store (time budget)
def test_a_second_server_on_a_busy_port_is_refused(service: Service, qledger_home: Path) -> None:
    from qledger.ledger.admin import CHECKPOINTER
    from qledger.rpc.server import ListenError, start_server

    keys = KeyStore(qledger_home)
    busy = service.running.address
    before = service.app.tree_size()
    try:
        start_server(service.app, keys.load("executor-1"), keys.load(CHECKPOINTER), listen=busy)
    except ListenError as exc:
        assert "in use" in str(exc) and busy in str(exc)
    else:
        raise AssertionError("a second server shared a busy port")
    assert service.app.tree_size() == before
    # The command says so in one line and exits 2; the first server still answers alone.
    refused = qledger(qledger_home, "serve", "--plaintext", "--listen", busy,
                      "--store", service.app.store.url, timeout=60)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "is in use" in refused.stderr
    assert qledger(qledger_home, "health", "--server", busy).stdout.strip() == "SERVING"


def test_serve_refuses_a_signing_key_its_store_has_not_registered(service: Service,
                                                                   qledger_home: Path) -> None:
    from qledger.ledger.admin import CHECKPOINTER
    from qledger.rpc.server import UnregisteredKeyError, start_server

    keys = KeyStore(qledger_home)
    stranger = keys.load_or_create("executor-2")  # a key file here, no entry in the store
    with pytest.raises(UnregisteredKeyError, match=r"executor-2.*not registered"):
        start_server(service.app, stranger, keys.load(CHECKPOINTER))
    # Registered, but for another purpose, or revoked: refused as well.
    service.app.register_key("root", "executor-2", stranger.public, "client")
    with pytest.raises(UnregisteredKeyError, match=r"as 'client', not .* as 'executor'"):
        start_server(service.app, stranger, keys.load(CHECKPOINTER))
    retired = keys.load_or_create("executor-3")
    service.app.register_key("root", "executor-3", retired.public, "executor")
    service.app.revoke_key("root", retired.key_id, "rotated")
    with pytest.raises(UnregisteredKeyError, match="was revoked"):
        start_server(service.app, retired, keys.load(CHECKPOINTER))
    refused = qledger(qledger_home, "serve", "--plaintext", "--listen", "127.0.0.1:0", "--executor",
                      "executor-2", "--store", service.app.store.url, timeout=60)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "registered to 'executor-2' as 'client'" in refused.stderr and "qledger keys add" in refused.stderr


@ONLY_SQLITE  # store-independent: the time budget
def test_serve_says_what_is_wrong_with_its_tls_files_and_its_metrics_port(service: Service,
                                                                          qledger_home: Path,
                                                                          tmp_path: Path) -> None:
    from qledger.ledger.admin import CHECKPOINTER
    from qledger.rpc.server import ExecutorSettings, ListenError, start_server
    from tests.executor.rpc.test_tls import issue

    cert, key, _, _ = issue("localhost", None)
    (tmp_path / "server.pem").write_bytes(cert)
    (tmp_path / "server.key").write_bytes(key)
    store = service.app.store.url
    swapped = qledger(qledger_home, "serve", "--listen", "127.0.0.1:0", "--store", store,
                      "--tls-cert", str(tmp_path / "server.key"), "--tls-key", str(tmp_path / "server.pem"))
    assert swapped.returncode == 2 and swapped.stderr.count("\n") == 1, swapped.stderr
    assert "swapped" in swapped.stderr and "bind" not in swapped.stderr
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        keys = KeyStore(qledger_home)
        refused = f"cannot serve metrics on 127.0.0.1:{port}: Address already in use"
        with pytest.raises(ListenError, match=refused):
            start_server(service.app, keys.load("executor-1"), keys.load(CHECKPOINTER),
                         settings=ExecutorSettings(metrics_port=port))
        busy = qledger(qledger_home, "serve", "--plaintext", "--listen", "127.0.0.1:0", "--metrics-port",
                       str(port), "--store", store)
        assert busy.returncode == 2 and busy.stderr.count("\n") == 1, busy.stderr
        assert "--metrics-port" in busy.stderr and "None" not in busy.stderr


def test_every_client_command_speaks_mutual_tls(sqlite_store_url: str, qledger_home: Path,
                                                tmp_path: Path) -> None:
    from qledger.governance.changes import grant_role
    from qledger.ledger.admin import CHECKPOINTER, ROOT, add_key
    from qledger.rpc.server import TLSConfig, start_server
    from tests.executor.rpc.test_tls import issue

    app, _ = make_ledger(sqlite_store_url, qledger_home)
    keys = KeyStore(qledger_home)
    executor_key = add_key(app, keys, "executor-1", "executor")
    add_key(app, keys, "client", "client")
    for role in ("submitter", "auditor"):
        grant_role(app, keys.load(ROOT), "client", role, "*")
    ca_cert, _, ca_name, ca_key = issue("qledger test CA", None, ca=True)
    server_cert, server_key, _, _ = issue("localhost", (ca_name, ca_key))
    client_cert, client_key, _, _ = issue("client", (ca_name, ca_key))
    files = {}
    for name, data in {"ca.pem": ca_cert, "client.pem": client_cert, "client.key": client_key}.items():
        files[name] = str(tmp_path / name)
        (tmp_path / name).write_bytes(data)
    running = start_server(app, executor_key, keys.load(CHECKPOINTER), listen="127.0.0.1:0",
                           tls=TLSConfig(server_cert, server_key, client_ca=ca_cert))
    address = f"127.0.0.1:{running.port}"
    tls_env = {"QLEDGER_SERVER": address, "QLEDGER_CA": files["ca.pem"],
               "QLEDGER_CLIENT_CERT": files["client.pem"], "QLEDGER_CLIENT_KEY": files["client.key"],
               "QLEDGER_SERVER_NAME": "localhost"}
    workflow = REPO / "executor" / "workflows" / "bell.json"
    try:
        # By the environment alone...
        submitted = qledger(qledger_home, "submit", str(workflow), "--wait", env=tls_env)
        assert submitted.returncode == 0, submitted.stderr
        run_id = submitted.stdout.strip().splitlines()[-1].split()[1].rstrip(":")
        for args in (["runs", "list"], ["runs", "show", run_id], ["health"],
                     ["report", run_id, "--server", address, "--format", "json"]):
            done = in_process(qledger_home, *args, env=tls_env)
            answered = run_id in done.stdout or "SERVING" in done.stdout
            assert done.returncode == 0 and answered, (args, done.stderr)
        # ... or by grpcurl's flags.
        flags = ["--server", address, "--ca", files["ca.pem"], "--cert", files["client.pem"], "--key",
                 files["client.key"], "--server-name", "localhost"]
        assert run_id in in_process(qledger_home, "runs", "show", run_id, *flags).stdout
        # Plaintext to a TLS server, or half a client identity, fail in one line.
        plain = in_process(qledger_home, "runs", "list", "--server", address)
        assert plain.returncode == 2 and plain.stderr.count("\n") == 1 and "UNAVAILABLE" in plain.stderr
        half = in_process(qledger_home, "runs", "list", "--server", address, "--ca", files["ca.pem"],
                          "--cert", files["client.pem"])
        assert half.returncode == 2 and "--cert and --key go together" in half.stderr
    finally:
        running.stop()


def test_reference_workflows_are_listed_and_shown_by_name(qledger_home: Path) -> None:
    listed = in_process(qledger_home, "workflows", "list")
    assert listed.returncode == 0
    assert listed.stdout.splitlines()[0].split()[:3] == ["NAME", "WORKFLOW", "BACKEND"]
    rows = {line.split()[0]: line.split() for line in listed.stdout.splitlines()[1:]}
    assert rows["bell"][1:3] == ["bell-sampling", "aer_ideal"] and rows["ghz_brisbane"][2] == "fake:brisbane"
    assert set(rows) == {p.stem for p in WORKFLOWS.glob("*.json")}
    shown = in_process(qledger_home, "workflows", "show", "bell")
    assert json.loads(shown.stdout) == json.loads((WORKFLOWS / "bell.json").read_text())
    unknown = in_process(qledger_home, "workflows", "show", "nope")
    assert unknown.returncode == 2 and "no reference workflow 'nope'; they are bell," in unknown.stderr
    not_a_file = in_process(qledger_home, "submit", "nope.json")
    assert not_a_file.returncode == 2 and "cannot read nope.json" in not_a_file.stderr


def test_version() -> None:
    from importlib.metadata import version

    done = subprocess.run([sys.executable, "-m", "qledger.cli", "--version"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout == f"qledger {version('qledger-provenance')}\n"


@pytest.mark.reliability
def test_submit_refuses_a_definition_as_written_before_signing(service: Service, tmp_path: Path) -> None:
    """2048.0 reads as a float; canonical JSON would make it 2048 unseen, so the CLI refuses it."""
    body = json.loads((WORKFLOWS / "bell.json").read_text())
    body["execute"]["shots"] = 2048.0
    path = tmp_path / "bell.json"
    path.write_text(json.dumps(body))
    before = service.app.tree_size()
    result = CliRunner().invoke(cli, ["submit", str(path), "--server", service.running.address,
                                      "--as", service.client.principal])
    assert result.exit_code == 2, result.output
    assert "execute.shots: must be an integer" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    body["execute"]["colour"] = "blue"
    path.write_text(json.dumps({**body, "execute": {**body["execute"], "shots": 2048}}))
    result = CliRunner().invoke(cli, ["submit", str(path), "--server", service.running.address,
                                      "--as", service.client.principal])
    assert result.exit_code == 2 and "execute.colour: is not a member of execute" in result.output
    assert service.app.tree_size() == before
