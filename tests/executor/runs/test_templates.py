"""Circuit templates as ledger entries: registered and signed by their author, versioned, run by
``name@version`` through the real server, approved for restricted backends by digest."""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import grpc
import pytest
from qiskit import qasm3, transpile
from qiskit_aer import AerSimulator

from qledger.api import qledger_pb2 as pb
from qledger.governance.changes import approve_template, grant_role, restrict_backend
from qledger.governance.policy import GovernanceError
from qledger.ledger import dsse
from qledger.ledger.admin import ROOT, add_key
from qledger.ledger.errors import AlreadyExistsError
from qledger.ledger.keys import KeyStore
from qledger.ledger.store.artifacts import HotArtifacts
from qledger.ledger.verify import verify
from qledger.provenance.lineage import lineage_json
from qledger.runs.reference_workflows import BELL
from qledger.runs.templates import BUILTINS, TemplateError, catalog, register, register_builtins, resolver
from qledger.runs.workflow import DEFAULT_PROJECT
from tests.executor.conftest import Service, ServiceFactory
from tests.executor.governance.test_governance import Client, governed_service
from tests.executor.rpc.test_grpc import code_of
from tests.executor.runs.test_user_workloads import finished

REPO = Path(__file__).resolve().parents[3]


def by_template(ref: str, **circuit: Any) -> dict[str, Any]:
    workflow = copy.deepcopy(BELL)
    workflow["name"] = f"run-{ref.replace('@', '-')}"
    workflow["circuit"] = {"template": ref, **circuit}
    return workflow


def template_entries(service: Service) -> list[dict[str, Any]]:
    return [json.loads(dsse.parse(e.state).payload)
            for e in service.app.recorder.select_notifications(start=None, limit=10_000)
            if e.topic.endswith("CircuitTemplates.Registered")]


def test_builtins_are_registered_qasm3_by_root(service: Service) -> None:
    root = KeyStore(service.home).load(ROOT)
    assert register_builtins(service.app, root) == ["bell@1", "ghz@1", "qaoa_maxcut@1"]
    assert register_builtins(service.app, root) == []  # once only
    listed = {t["ref"]: t for t in (catalog(service.app) or pytest.fail("no catalog")).listing()}
    assert set(listed) == {"bell@1", "ghz@1", "qaoa_maxcut@1"}
    for ref, template in listed.items():
        source = (BUILTINS / f"{ref.split('@')[0]}.qasm").read_bytes()
        assert template["sha256"] == hashlib.sha256(source).hexdigest() and template["author"] == ROOT
        assert template["qubits"] == qasm3.loads(source.decode()).num_qubits
    assert listed["qaoa_maxcut@1"]["parameters"] == ["beta", "gamma"]
    # Each version is an entry signed by its author, naming its source artifact by digest.
    entry = template_entries(service)[0]
    assert entry["principal"] == ROOT and set(entry["payload"]["source"]) == {"sha256", "size", "media_type"}
    assert verify(service.app.source()).ok


def test_a_workflow_runs_a_template_by_name_and_version(service: Service) -> None:
    register_builtins(service.app, KeyStore(service.home).load(ROOT))
    workflow = by_template("bell@1")
    entries, records = finished(service, workflow)
    assert entries[-1].event_type.endswith("Run.Completed")
    loading = records["circuit_synthesis"]
    source = (BUILTINS / "bell.qasm").read_bytes()
    sha = hashlib.sha256(source).hexdigest()
    assert loading["template"] == {"ref": "bell@1", "sha256": sha, "author": ROOT}
    assert loading["circuit_source"]["sha256"] == sha
    assert HotArtifacts(service.app.ledger).get(sha) == source
    # The same bytes on Aer with the same seeds give the same counts.
    isa = transpile(qasm3.loads(source.decode()), AerSimulator(), optimization_level=1,
                    seed_transpiler=workflow["transpile"]["seed_transpiler"])
    direct = AerSimulator().run(isa, shots=workflow["execute"]["shots"],
                                seed_simulator=workflow["execute"]["seed_simulator"]).result().get_counts()
    assert records["execution"]["counts"] == dict(sorted(direct.items()))
    prov = lineage_json(service.app.require_origin(), [(e.position, e.envelope) for e in entries])
    assert f"qledger:circuit_source/{sha}" in prov["entity"]
    # A parameterised template takes its bindings by name.
    qaoa = by_template("qaoa_maxcut@1", parameters={"beta": 0.4, "gamma": 0.8})
    entries, records = finished(service, qaoa)
    assert entries[-1].event_type.endswith("Run.Completed")
    assert records["circuit_synthesis"]["parameters"] == {"beta": 0.4, "gamma": 0.8}


@pytest.mark.parametrize(("circuit", "field"), [
    ({"template": "bell@7"}, "workflow.circuit.template"),
    ({"template": "Bell@x"}, "workflow.circuit.template"),
    ({"template": "bell@1", "qubits": 2}, "workflow.circuit.qubits"),
    ({"template": "qaoa_maxcut@1", "parameters": {"beta": 0.4}}, "workflow.circuit.parameters"),
])
def test_bad_template_references_are_refused(service: Service, circuit: dict[str, Any], field: str) -> None:
    register_builtins(service.app, KeyStore(service.home).load(ROOT))
    before = service.app.tree_size()
    workflow = copy.deepcopy(BELL)
    workflow["circuit"] = circuit
    code, fields = code_of(lambda: service.submit(workflow))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and fields == [field]
    assert service.app.tree_size() == before


def test_versions_are_the_authors_and_never_change(service: Service) -> None:
    keys = KeyStore(service.home)
    bob = add_key(service.app, keys, "bob", "client")
    source = (b'OPENQASM 3.0;\ninclude "stdgates.inc";\ninput float theta;\nqubit[1] q;\nbit[1] c;\n'
              b'rx(theta) q[0];\nc = measure q;\n')
    first = register(service.app, bob, "rot", "qasm3", source, "a rotation")
    second = register(service.app, bob, "rot", "qasm3", source.replace(b"rx", b"ry"))
    assert (first["ref"], second["ref"]) == ("rot@1", "rot@2") and first["parameters"] == ["theta"]
    assert template_entries(service)[-1]["principal"] == "bob"
    with pytest.raises(AlreadyExistsError):
        register(service.app, bob, "rot", "qasm3", source, version=1)
    size = service.app.tree_size()
    with pytest.raises(TemplateError) as caught:
        register(service.app, bob, "rot", "qasm3", b"OPENQASM 3.0;\nqubit[1] q;\nfoo q[0];\n")
    assert caught.value.field == "template source" and service.app.tree_size() == size
    with pytest.raises(TemplateError):
        register(service.app, bob, "Not A Name", "qasm3", source)


def test_an_altered_source_is_refused_rather_than_run(service: Service) -> None:
    register_builtins(service.app, KeyStore(service.home).load(ROOT))
    sha = hashlib.sha256((BUILTINS / "bell.qasm").read_bytes()).hexdigest()
    writer = service.app.ledger
    with writer.write_transaction() as cursor:  # what someone with write access to the table could do
        cursor.execute(writer.sql("UPDATE {artifacts} SET data = {p} WHERE sha256 = {p}"),
                       ((BUILTINS / "ghz.qasm").read_bytes(), sha))
    before = service.app.tree_size()
    code, fields = code_of(lambda: service.submit(by_template("bell@1")))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and fields == ["workflow.circuit.template"]
    assert service.app.tree_size() == before
    assert resolver(service.app)("ghz@1") is not None  # the others are intact


def test_an_approval_of_a_template_version_admits_its_runs_on_a_restricted_backend(
        service_factory: ServiceFactory) -> None:
    service, people = governed_service(service_factory)
    keys = KeyStore(service.home)
    carol = add_key(service.app, keys, "carol", "client")
    grant_role(service.app, people["root"], "carol", "submitter", DEFAULT_PROJECT)
    source = (BUILTINS / "bell.qasm").read_bytes()
    register(service.app, people["author"], "pair", "qasm3", source)
    register(service.app, people["author"], "pair", "qasm3", source.replace(b"h q[0];", b"x q[0];\nh q[0];"))
    restrict_backend(service.app, people["root"], "hardware")
    on_hardware = {**by_template("pair@1"), "execute": {**BELL["execute"], "backend": "hardware"}}
    submitter = Client(service, carol)
    assert submitter.refused(on_hardware).code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(GovernanceError, match="self-approval"):
        approve_template(service.app, people["author"], "pair@1", DEFAULT_PROJECT, "mine")
    with pytest.raises(GovernanceError, match="not approver"):
        approve_template(service.app, people["outsider"], "pair@1", DEFAULT_PROJECT, "fine")
    sha = approve_template(service.app, people["reviewer"], "pair@1", DEFAULT_PROJECT, "reviewed the circuit")
    assert sha == hashlib.sha256(source).hexdigest()
    run_id = submitter.submit(on_hardware)
    assert submitter.executor.GetRun(pb.GetRunRequest(run_id=run_id)).status == "completed"
    # Any definition running that version is admitted (another seed, another name) ...
    reseeded = copy.deepcopy(on_hardware)
    reseeded["execute"]["seed_simulator"] = 99
    submitter.submit(reseeded)
    # ... but not another version, whose bytes differ.
    other = {**on_hardware, "circuit": {"template": "pair@2"}}
    assert submitter.refused(other).code() == grpc.StatusCode.PERMISSION_DENIED


def test_templates_commands(sqlite_store_url: str, qledger_home: Path, tmp_path: Path) -> None:
    from tests.executor.cli.test_cli_serve import in_process

    def qledger(*args: str) -> subprocess.CompletedProcess[str]:
        return in_process(qledger_home, *args)  # in this process: the suite's time budget

    assert qledger("init", "--store", sqlite_store_url).returncode == 0
    listed = qledger("templates", "list", "--store", sqlite_store_url)
    assert listed.returncode == 0 and all(f"{n}@1" in listed.stdout for n in ("bell", "ghz", "qaoa_maxcut"))
    mine = tmp_path / "mine.qasm"
    mine.write_bytes((BUILTINS / "ghz.qasm").read_bytes().replace(b"[5]", b"[6]"))
    added = qledger("templates", "add", str(mine), "--name", "wide", "--store", sqlite_store_url)
    assert added.returncode == 0 and "registered wide@1 (6 qubits" in added.stdout, added.stderr
    shown = json.loads(qledger("templates", "show", "wide@1", "--format", "json", "--store",
                               sqlite_store_url).stdout)
    assert shown["source"].encode() == mine.read_bytes() and shown["author"] == ROOT
    bad = tmp_path / "bad.qasm"
    bad.write_text("OPENQASM 3.0;\nqubit[1] q;\nh q[0]\n")
    refused = qledger("templates", "add", str(bad), "--name", "bad", "--store", sqlite_store_url)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "line" in refused.stderr
    assert "Traceback" not in refused.stderr
    missing = qledger("templates", "show", "nope@1", "--store", sqlite_store_url)
    assert missing.returncode == 2 and "no registered template nope@1" in missing.stderr
