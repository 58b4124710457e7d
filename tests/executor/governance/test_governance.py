"""Policy gates over a real server: approvals for restricted backends, budgets, canaries."""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from typer.testing import CliRunner

from qledger.api import qledger_pb2 as pb
from qledger.api import qledger_pb2_grpc as pb_grpc
from qledger.cli import app as cli
from qledger.governance.changes import approve, grant_role, policy, restrict_backend, set_canary, set_quota
from qledger.governance.policy import GovernanceError, canary_bucket
from qledger.ledger import dsse
from qledger.ledger.admin import ROOT, add_key
from qledger.ledger.keys import KeyStore, SigningKey
from qledger.provenance.operations import operation_rows, operations_view
from qledger.provenance.projections import projection_runner
from qledger.rpc.channel import client_channel
from qledger.runs.backends import BackendCatalog, FaultConfig
from qledger.runs.commands import submit_command
from qledger.runs.reference_workflows import BELL
from qledger.runs.workflow import DEFAULT_PROJECT
from tests.executor.conftest import Service, ServiceFactory, step_records
from tests.executor.rpc.conftest import audit_entries
from tests.ledger.helpers import RawStore

HARDWARE = {**BELL, "execute": {**BELL["execute"], "backend": "hardware"}}


class Client:
    """A principal calling the server with its own key, as a real client would."""

    def __init__(self, service: Service, key: SigningKey) -> None:
        self.service, self.key = service, key
        self.channel = client_channel(service.running.address, signer=key)
        self.executor = pb_grpc.ExecutorStub(self.channel)

    def submit(self, workflow: dict[str, Any], rerun_of: str | None = None) -> str:
        command = pb.SignedEnvelope(envelope=submit_command(self.key, self.service.origin, workflow,
                                                            str(uuid.uuid4()), rerun_of=rerun_of))
        if rerun_of:
            reply = self.executor.RerunWorkflow(pb.RerunWorkflowRequest(run_id=rerun_of, command=command))
        else:
            reply = self.executor.SubmitWorkflow(pb.SubmitWorkflowRequest(command=command))
        run_id = str(reply.run.run_id)
        list(self.executor.WatchRun(pb.WatchRunRequest(run_id=run_id), timeout=60))
        return run_id

    def refused(self, workflow: dict[str, Any]) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as caught:
            self.submit(workflow)
        return caught.value


def governed_service(service_factory: ServiceFactory) -> tuple[Service, dict[str, SigningKey]]:
    catalog = BackendCatalog({"hardware": ("aer_ideal", FaultConfig())})
    service = service_factory(catalog, authorize=True)
    keys = KeyStore(service.home)
    root = keys.load(ROOT)
    people = {}
    for name, role in (("author", "submitter"), ("reviewer", "approver"), ("outsider", "auditor")):
        people[name] = add_key(service.app, keys, name, "client")
        grant_role(service.app, root, name, role, DEFAULT_PROJECT)
    people["root"] = root
    return service, people


def test_restricted_backend_needs_an_approval_by_someone_else(service_factory: ServiceFactory) -> None:
    service, people = governed_service(service_factory)
    restrict_backend(service.app, people["root"], "hardware")
    author = Client(service, people["author"])
    size = service.app.tree_size()
    refused = author.refused(HARDWARE)
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED and "restricted" in refused.details()  # type: ignore[attr-defined]
    assert service.app.tree_size() == size + 1  # only the recorded refusal: nothing of the run
    assert audit_entries(service)[-1]["payload"]["kind"] == "approval_required"

    # An experimental run needs no approval: it never touches the restricted backend.
    experimental = {**HARDWARE, "execute": {**HARDWARE["execute"], "priority": "experimental"}}
    tried = author.submit(experimental)
    records = step_records([json.loads(dsse.parse(e.envelope).payload) for e in
                            author.executor.WatchRun(pb.WatchRunRequest(run_id=tried))])
    assert records["execution"]["backend"]["name"] == "aer_ideal"
    assert records["data_preparation"]["routing"] == {
        "variant": "simulator", "requested_backend": "hardware",
        "reason": "experimental runs do not use restricted backends"}

    with pytest.raises(GovernanceError, match="self-approval"):
        approve(service.app, people["author"], HARDWARE, author="author", rationale="mine")
    with pytest.raises(GovernanceError, match="not approver"):
        approve(service.app, people["outsider"], HARDWARE, author="author", rationale="looks fine")
    with pytest.raises(GovernanceError, match="no completed run reproduced"):  # not earned yet
        approve(service.app, people["reviewer"], HARDWARE, author="author", rationale="looks fine")

    first = author.submit(BELL)  # the same template on the simulator, then a rerun of it
    rerun = author.submit(BELL, rerun_of=first)
    # Evidence that does not verify is no evidence: alter one of the rerun's entries.
    raw = RawStore(service.app.store.url)
    position = service.app.source().stream_entries(uuid.UUID(rerun), 0)[2].position  # type: ignore[attr-defined]
    original = raw.state_at(position)
    raw.set_state(position, original.replace(b'"', b' "', 1))
    with pytest.raises(GovernanceError, match="does not verify"):
        approve(service.app, people["reviewer"], HARDWARE, author="author", rationale="looks fine")
    raw.set_state(position, original)
    sha = approve(service.app, people["reviewer"], HARDWARE, author="author",
                  rationale="reproduced on aer_ideal; same circuit and seeds")
    run_id = author.submit(HARDWARE)
    assert author.executor.GetRun(pb.GetRunRequest(run_id=run_id)).status == "completed"
    records = step_records([json.loads(dsse.parse(e.envelope).payload) for e in
                            author.executor.WatchRun(pb.WatchRunRequest(run_id=run_id))])
    assert records["execution"]["backend"]["name"] == "hardware"
    approval = [e for e in service.app.recorder.select_notifications(start=None, limit=1000)
                if e.topic.endswith("Governance.TemplateApproved")]
    payload = json.loads(dsse.parse(approval[-1].state).payload)
    assert payload["principal"] == "reviewer" and payload["payload"]["workflow_sha256"] == sha
    assert "reproduced" in payload["payload"]["rationale"] and payload["timestamp"]
    # Another definition (another seed) is not covered by that approval.
    other = {**HARDWARE, "execute": {**HARDWARE["execute"], "seed_simulator": 99}}
    assert author.refused(other).code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]


def test_the_run_that_would_cross_the_budget_is_refused(service_factory: ServiceFactory) -> None:
    service, people = governed_service(service_factory)
    shots = BELL["execute"]["shots"]
    set_quota(service.app, people["root"], DEFAULT_PROJECT, shots=2 * shots + 100, runs=None,
              executor_seconds=None, warn_at=0.75)
    author = Client(service, people["author"])
    author.submit(BELL)
    assert not [e for e in audit_entries(service) if e["payload"]["kind"] == "budget_warning"]
    author.submit(BELL)  # crosses 75%: a warning is recorded, the run goes ahead
    warnings = [e["payload"] for e in audit_entries(service) if e["payload"]["kind"] == "budget_warning"]
    assert len(warnings) == 1 and "shots" in warnings[0]["reason"]
    size = service.app.tree_size()
    refused = author.refused(BELL)
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    assert "budget exceeded: shots" in refused.details()  # type: ignore[attr-defined]
    # Nothing of the refused run exists: the only new entry is the recorded refusal.
    assert service.app.tree_size() == size + 1
    assert audit_entries(service)[-1]["payload"]["kind"] == "budget_refused"
    runs = projection_runner(service.app)
    runs.catch_up(["operations"])
    assert len(runs.read("operations", lambda db: operation_rows(db))) == 2
    # A run budget works the same way; other projects are not affected.
    set_quota(service.app, people["root"], DEFAULT_PROJECT, shots=None, runs=2, executor_seconds=None,
              warn_at=0.9)
    assert author.refused(BELL).code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    grant_role(service.app, people["root"], "author", "submitter", "other")
    author.submit({**BELL, "project": "other"})


def test_canary_split_is_deterministic_and_within_binomial_tolerance() -> None:
    fraction, n = 0.2, 1000
    ids = [str(uuid.UUID(int=i * 7919 + 13)) for i in range(n)]
    chosen = sum(canary_bucket(run_id) < fraction for run_id in ids)
    sigma = math.sqrt(n * fraction * (1 - fraction))
    assert abs(chosen - n * fraction) <= 3 * sigma, chosen
    assert [canary_bucket(i) for i in ids[:50]] == [canary_bucket(i) for i in ids[:50]]
    random_ids = [str(uuid.uuid4()) for _ in range(n)]
    assert abs(sum(canary_bucket(r) < 0.5 for r in random_ids) - n / 2) <= 3 * math.sqrt(n / 4)


def test_canary_routes_runs_and_the_operations_view_compares_them(service_factory: ServiceFactory) -> None:
    service, people = governed_service(service_factory)
    set_canary(service.app, people["root"], BELL["name"], "aer_noisy", 0.5)
    author = Client(service, people["author"])
    runs = [author.submit(BELL) for _ in range(8)]
    variants = {}
    for run_id in runs:
        records = step_records([json.loads(dsse.parse(e.envelope).payload) for e in
                                author.executor.WatchRun(pb.WatchRunRequest(run_id=run_id))])
        routing = records["data_preparation"]["routing"]
        expected = "candidate" if canary_bucket(run_id) < 0.5 else "baseline"
        assert routing["variant"] == expected and routing["fraction"] == 0.5
        assert records["execution"]["backend"]["name"] == ("aer_noisy" if expected == "candidate"
                                                           else "aer_ideal")
        variants[run_id] = expected
    runner = projection_runner(service.app)
    runner.catch_up(["operations"])
    view = {g["variant"]: g for g in operations_view(runner.read("operations", lambda db: operation_rows(db)),
                                                     "variant")}
    for variant in set(variants.values()):
        assert view[variant]["runs"] == list(variants.values()).count(variant)
        assert view[variant]["success_rate"] == 1.0 and view[variant]["mean_tvd"] is not None
        assert view[variant]["queue_ms_p50"] is not None
    if "candidate" in view and "baseline" in view:  # the noisy candidate is further from ideal
        assert view["candidate"]["mean_tvd"] > view["baseline"]["mean_tvd"]


def test_canary_circuit_variant(service_factory: ServiceFactory) -> None:
    """A candidate may be a circuit variant: here every run (fraction 1) is transpiled at level 3."""
    service, people = governed_service(service_factory)
    set_canary(service.app, people["root"], BELL["name"], None, 1.0, optimization_level=3)
    author = Client(service, people["author"])
    run_id = author.submit(BELL)
    records = step_records([json.loads(dsse.parse(e.envelope).payload) for e in
                            author.executor.WatchRun(pb.WatchRunRequest(run_id=run_id))])
    assert records["transpilation"]["optimization_level"] == 3 != BELL["transpile"]["optimization_level"]
    routing = records["data_preparation"]["routing"]
    assert routing["variant"] == "candidate" and routing["baseline_optimization_level"] == 1
    assert records["execution"]["backend"]["name"] == "aer_ideal"  # backend unchanged
    set_canary(service.app, people["root"], BELL["name"], None, 1.0)  # neither: the canary stops
    records = step_records([json.loads(dsse.parse(e.envelope).payload) for e in
                            author.executor.WatchRun(pb.WatchRunRequest(run_id=author.submit(BELL)))])
    assert "routing" not in records["data_preparation"]
    assert records["transpilation"]["optimization_level"] == 1


def test_governance_commands(service_factory: ServiceFactory, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    service, _ = governed_service(service_factory)
    monkeypatch.setenv("QLEDGER_HOME", str(service.home))
    store = service.app.store.url

    def run(*args: str) -> Any:
        return CliRunner().invoke(cli, [*args, "--store", store])

    assert run("quota", "set", "default", "--shots", "5000", "--runs", "3", "--warn-at", "0.5").exit_code == 0
    Client(service, KeyStore(service.home).load("author")).submit(BELL)
    shown = json.loads(run("quota", "show", "default").output)
    assert shown["quota"]["shots"] == 5000 and shown["used"]["runs"] == 1
    assert shown["used"]["shots"] == BELL["execute"]["shots"]
    assert run("quota", "set", "default", "--warn-at", "2").exit_code == 2
    assert run("backends", "restrict", "hardware").exit_code == 0
    assert "hardware" in policy(service.app).restricted
    assert run("canary", "set", BELL["name"], "--candidate", "aer_noisy", "--fraction", "0.25").exit_code == 0
    assert policy(service.app).canaries[BELL["name"]]["fraction"] == 0.25
    definition = tmp_path / "hw.json"
    definition.write_text(json.dumps(HARDWARE))
    self_approval = run("approve", str(definition), "--author", "reviewer", "--rationale", "x",
                        "--as", "reviewer")
    assert self_approval.exit_code == 2 and "self-approval" in self_approval.output
    assert run("roles", "grant", "someone", "emperor").exit_code == 2  # unknown role
    denied = CliRunner().invoke(cli, ["roles", "grant", "x", "auditor", "--as", "author", "--store", store])
    assert denied.exit_code == 2 and "not admin" in denied.output
