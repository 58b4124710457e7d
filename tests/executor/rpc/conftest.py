"""Fixtures of the gRPC edge's tests: a governed server with one principal per role."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from eventsourcing.utils import get_topic

from qledger.api import qledger_pb2 as pb
from qledger.api import qledger_pb2_grpc as pb_grpc
from qledger.governance.changes import grant_role
from qledger.governance.policy import ALL_PROJECTS, AuditEvent, AuditSummary
from qledger.ledger import dsse
from qledger.ledger.admin import ROOT, add_key
from qledger.ledger.content import EntryContent
from qledger.ledger.keys import KeyStore, SigningKey
from qledger.rpc.channel import client_channel
from qledger.runs.commands import submit_command
from qledger.runs.reference_workflows import BELL
from tests.executor.conftest import Service, ServiceFactory

ALPHA = {**BELL, "project": "alpha"}
# who -> (role, project) grants; "nobody" has a registered key and no role.
PRINCIPALS = {
    "sub": [("submitter", "alpha")], "beta-sub": [("submitter", "beta")], "appr": [("approver", "alpha")],
    "aud": [("auditor", ALL_PROJECTS)], "adm": [("admin", ALL_PROJECTS)], "nobody": [],
}
ANYONE_WITH_A_ROLE = {"sub", "beta-sub", "appr", "aud", "adm"}
WATCHERS = {"sub", "appr", "aud", "adm"}  # of project alpha
EXPECTED = {  # RPC -> who may call it on project alpha's run
    "SubmitWorkflow": {"sub", "adm"}, "RerunWorkflow": {"sub", "adm"}, "CancelRun": {"sub", "adm"},
    "GetRun": WATCHERS, "WatchRun": WATCHERS, "ListRuns": WATCHERS | {"beta-sub"}, "GetArtifact": WATCHERS,
    "GetCheckpoint": ANYONE_WITH_A_ROLE,
    "GetEntry": {"aud", "adm"}, "StreamEntries": {"aud", "adm"},
    "GetInclusionProof": ANYONE_WITH_A_ROLE, "GetInclusionProofs": ANYONE_WITH_A_ROLE,
    "GetConsistencyProof": ANYONE_WITH_A_ROLE,
    "ExportBundle": {"aud", "adm"}, "GetLineage": {"aud", "adm"}, "GetReport": {"aud", "adm"},
}


def audit_entries(service: Service, event: Any = AuditEvent.Observed) -> list[dict[str, Any]]:  # type: ignore[attr-defined]
    rows = service.app.recorder.select_notifications(start=None, limit=10000, topics=[get_topic(event)])
    return [EntryContent.from_bytes(dsse.parse(r.state).payload).to_json() for r in rows]


def refusal_counts(service: Service) -> Counter[tuple[str, str, str]]:
    """(kind, subject, action) -> how many refusals the ledger accounts for: entries of their
    own plus the counts of summaries, once the server has summarised every open window."""
    assert service.running.authz is not None
    service.running.authz.record_summaries(flush_all=True)
    counts: Counter[tuple[str, str, str]] = Counter()
    for entry in audit_entries(service):
        p = entry["payload"]
        counts[(p["kind"], p["subject"], p["action"])] += 1
    for entry in audit_entries(service, AuditSummary.Summarised):  # type: ignore[attr-defined]
        p = entry["payload"]
        counts[(p["kind"], p["subject"], p["action"])] += p["count"]
    return counts


Governed = tuple[Service, dict[str, SigningKey], str]


@pytest.fixture
def governed(service_factory: ServiceFactory) -> Governed:
    service = service_factory(export=True, authorize=True)
    keys = KeyStore(service.home)
    root = keys.load(ROOT)
    signers = {}
    for name, grants in PRINCIPALS.items():
        signers[name] = add_key(service.app, keys, name, "client")
        for role, project in grants:
            grant_role(service.app, root, name, role, project)
    command = submit_command(signers["sub"], service.origin, ALPHA, "baseline")
    with client_channel(service.running.address, signer=signers["sub"]) as channel:
        run_id = pb_grpc.ExecutorStub(channel).SubmitWorkflow(pb.SubmitWorkflowRequest(
            command=pb.SignedEnvelope(envelope=command)), timeout=30).run.run_id
        list(pb_grpc.ExecutorStub(channel).WatchRun(pb.WatchRunRequest(run_id=run_id), timeout=60))
    return service, signers, run_id


