"""The Python client over a real loopback server: the README's example as written, results as
Qiskit objects, and every failure as its own error class."""

from __future__ import annotations

import contextlib
import io
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from qiskit.primitives import SamplerPubResult
from qiskit.result import Counts

from qledger import (
    CallFailedError,
    Client,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RunFailedError,
)
from qledger.governance.changes import grant_role
from qledger.ledger.admin import ROOT
from qledger.ledger.keys import KeyStore
from qledger.runs.backends import BackendCatalog, FaultConfig
from qledger.runs.pipeline import RetryPolicy
from qledger.runs.reference_workflows import BELL, load
from qledger.runs.workflow import DEFAULT_PROJECT
from tests.conftest import ONLY_SQLITE
from tests.executor.conftest import Service, ServiceFactory

README = Path(__file__).resolve().parents[3] / "README.md"


def readme_example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("### From Python"):]
    return section[section.index("```python\n") + len("```python\n"):section.index("```\n", 10)]


def as_client(service: Service, *roles: str) -> Client:
    keys = KeyStore(service.home)
    key = keys.load_or_create("client")
    service.app.register_key(ROOT, "client", key.public, "client")
    for role in roles:
        grant_role(service.app, keys.load(ROOT), "client", role, DEFAULT_PROJECT)
    return Client(service.running.address, principal="client")


@ONLY_SQLITE
def test_the_readme_example_runs_as_written(service_factory: ServiceFactory) -> None:
    service = service_factory(authorize=True, export=True)
    as_client(service, "submitter", "auditor").close()  # the roles the README grants
    code = readme_example()
    assert len(code.strip().splitlines()) <= 10 and "127.0.0.1:50051" in code
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        exec(compile(code.replace("127.0.0.1:50051", service.running.address), "README", "exec"), {})
    counts, report = out.getvalue().splitlines()
    assert set(eval(counts)) == {"00", "11"} and sum(eval(counts).values()) == BELL["execute"]["shots"]
    assert "'total_variation_distance'" in report and int(report.split()[-1]) > 1000  # bundle bytes
    progress = err.getvalue()
    assert re.search(r"^\w{8} Completed$", progress, re.M) and "StepRecorded execution" in progress


@ONLY_SQLITE
def test_results_are_qiskit_objects_and_name_their_entries(service: Service) -> None:
    with as_client(service) as client:
        bell = client.submit(BELL).result()
        assert isinstance(bell.counts, Counts) and bell.counts.shots() == BELL["execute"]["shots"]
        assert bell.positions == sorted(bell.positions) and len(bell.positions) == 8
        sweep = client.submit(load("sweep_qasm3")).result()
        sampler = sweep.pubs[0]
        assert isinstance(sampler, SamplerPubResult)
        recorded = [e.payload["record"] for e in sweep.entries if e.payload.get("record", {}).get(
            "kind") == "pub_result"]
        bindings = recorded[-1]["bindings"][1]
        register = next(iter(sampler.data.keys()))
        bits = getattr(sampler.data, register)
        assert bits.shape == (bindings,) and bits.num_shots == recorded[0]["shots"]
        # The same counts as the artifacts the entries name, binding by binding.
        import json

        first = json.loads(client.run(sweep.run_id).artifact(recorded[0]["result_sha256"]))["counts"][0]
        assert bits.get_counts(0) == first[register]
        vqe = client.submit(load("vqe_h2")).result()
        assert vqe.energy is not None and vqe.energy < -1.0


@ONLY_SQLITE
def test_each_failure_is_its_own_error(service_factory: ServiceFactory, tmp_path: Path) -> None:
    down = BackendCatalog({"down": ("aer_ideal", FaultConfig(failure_rate=1.0))})
    service = service_factory(down, authorize=True,
                              retry=RetryPolicy(attempts=1, initial_wait=0.01, max_wait=0.01))
    with as_client(service, "submitter") as client:
        wrong: dict[str, Any] = {**BELL, "execute": {**BELL["execute"], "shots": 0}}
        with pytest.raises(InvalidRequestError) as invalid:
            client.submit(wrong)
        assert invalid.value.field == "workflow.execute.shots" and invalid.value.code == "INVALID_ARGUMENT"
        with pytest.raises(NotFoundError) as missing:
            client.run(str(uuid.uuid4())).status  # noqa: B018
        assert missing.value.field == "run_id"
        run = client.submit({**BELL, "execute": {**BELL["execute"], "backend": "down"}})
        with pytest.raises(RunFailedError) as failed:
            run.result()
        assert failed.value.status == "failed" and failed.value.step == "execution"
        with pytest.raises(NotFoundError) as unnamed:
            run.artifact("0" * 64)
        assert unnamed.value.field == "sha256"
        with pytest.raises(PermissionDeniedError):
            run.report()  # a submitter without the auditor role
    with pytest.raises(CallFailedError) as unreachable:
        Client("127.0.0.1:9", principal="client").checkpoint()
    assert unreachable.value.code == "UNAVAILABLE"


def test_the_client_speaks_mutual_tls_and_submits_a_workflow_file(sqlite_store_url: str, qledger_home: Path,
                                                                  tmp_path: Path) -> None:
    """Certificates as files (or bytes), the signing key from $QLEDGER_HOME, a workflow file."""
    import json

    from qledger.ledger.admin import CHECKPOINTER
    from qledger.rpc.server import TLSConfig, start_server
    from tests.executor.rpc.test_tls import issue
    from tests.ledger.helpers import make_ledger

    app, _ = make_ledger(sqlite_store_url, qledger_home)
    keys = KeyStore(qledger_home)
    executor_key = keys.load_or_create("executor-1")
    app.register_key(ROOT, "executor-1", executor_key.public, "executor")
    signer = keys.load_or_create("client")
    app.register_key(ROOT, "client", signer.public, "client")
    grant_role(app, keys.load(ROOT), "client", "submitter", DEFAULT_PROJECT)
    ca_cert, _, ca_name, ca_key = issue("qledger test CA", None, ca=True)
    server_cert, server_key, _, _ = issue("localhost", (ca_name, ca_key))
    client_cert, client_key, _, _ = issue("client", (ca_name, ca_key))
    (tmp_path / "ca.pem").write_bytes(ca_cert)
    (tmp_path / "client.pem").write_bytes(client_cert)
    workflow = tmp_path / "bell.json"
    workflow.write_text(json.dumps(BELL))
    running = start_server(app, executor_key, keys.load(CHECKPOINTER), listen="127.0.0.1:0",
                           tls=TLSConfig(server_cert, server_key, client_ca=ca_cert))
    try:
        with Client(f"127.0.0.1:{running.port}", principal="client", ca=tmp_path / "ca.pem",
                    cert=str(tmp_path / "client.pem"), key=client_key, server_name="localhost") as client:
            result = client.submit(workflow).result()
            assert result.counts is not None and result.counts.shots() == BELL["execute"]["shots"]
        with Client(f"127.0.0.1:{running.port}", principal="client", ca=ca_cert,
                    server_name="localhost") as no_certificate, pytest.raises(CallFailedError) as refused:
            no_certificate.checkpoint()
        assert refused.value.code == "UNAVAILABLE"  # the handshake needs a client certificate
    finally:
        running.stop()
        app.close()


@ONLY_SQLITE
def test_inclusion_proofs_come_in_batches_of_one_tree(service: Service,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Many positions (repeats too) in calls of at most the server's limit, every proof in the
    tree asked for; a server without GetInclusionProofs is asked one position at a time."""
    import grpc

    import qledger.client.client as client_module
    from qledger.ledger import merkle

    with as_client(service) as client:
        client.submit(BELL).result()
        size = service.app.tree_size()
        root = bytes.fromhex(service.app.inclusion_proof(1, size)["root_hash"])
        leaves = {p: bytes.fromhex(proof["leaf_hash"])
                  for p, proof in enumerate(service.app.inclusion_proofs(range(1, size + 1), size), start=1)}
        wanted = [size, 1, 2, 1, *range(3, size)]
        monkeypatch.setattr(client_module, "MAX_PROOFS_PER_CALL", 3)
        calls = 0
        batched = client.ledger.GetInclusionProofs

        def counted(*args: Any, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            return batched(*args, **kwargs)

        monkeypatch.setattr(client.ledger, "GetInclusionProofs", counted)
        proofs = client.inclusion_proofs(wanted, size)
        assert sorted(proofs) == list(range(1, size + 1)) and calls == -(-size // 3)
        assert all(merkle.verify_inclusion(p - 1, size, leaves[p], path, root) for p, path in proofs.items())

        class Unimplemented(grpc.RpcError):
            def code(self) -> grpc.StatusCode:
                return grpc.StatusCode.UNIMPLEMENTED

        def old_server(*_args: Any, **_kwargs: Any) -> Any:
            raise Unimplemented()

        monkeypatch.setattr(client.ledger, "GetInclusionProofs", old_server)
        assert client.inclusion_proofs(wanted, size) == proofs
