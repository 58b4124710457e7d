"""A bundle's PROV lineage recomputed from its entries by ledger/FORMAT.md's rules ('Lineage of a
run') alone, with json, hashlib and rfc8785: what an auditor in another language would write."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any
from uuid import UUID

import rfc8785

from qledger.ledger.admin import CHECKPOINTER, export_key
from qledger.ledger.keys import KeyStore
from qledger.provenance.bundle_export import export_bundle
from qledger.runs.reference_workflows import load
from tests.executor.conftest import ServiceFactory

Q = "qledger:"


def lineage_by_the_rules(origin: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    doc: dict[str, dict[str, Any]] = {"prefix": {"qledger": "https://qledger.dev/ns#"}}
    previous = None
    for entry in entries:
        envelope = rfc8785.dumps(entry["envelope"])
        content = json.loads(base64.b64decode(entry["envelope"]["payload"]))
        run, payload, position = content["stream_id"], content["payload"], entry["position"]
        where = {Q + "ledger_position": {"$": str(position), "type": "xsd:int"},
                 Q + "leaf_hash": hashlib.sha256(b"\x00" + envelope).hexdigest(), Q + "origin": origin}
        numbered = iter(range(1, 1000))

        def node(kind: str, name: str, attributes: dict[str, Any], where: dict[str, Any] = where) -> str:
            doc.setdefault(kind, {}).setdefault(Q + name, {**attributes, **where})  # the first one kept
            return Q + name

        def relate(kind: str, ends: tuple[str, str], source: str, target: str, shared: bool = False,
                   prefix: str = f"{run}/{position}", numbered: Any = numbered) -> None:
            name = (hashlib.sha256(f"{source}\n{target}".encode()).hexdigest()[:32] if shared
                    else f"{prefix}.{next(numbered)}")
            doc.setdefault(kind, {})[f"{Q}{kind}/{name}"] = {f"prov:{ends[0]}": source,
                                                            f"prov:{ends[1]}": target}

        if content["event_type"].endswith("Run.Submitted"):
            sha = payload["workflow_sha256"]
            workflow = node("entity", f"workflow/{sha}",
                            {Q + "sha256": sha, Q + "name": payload["workflow"]["name"]})
            person = node("agent", f"principal/{content['principal']}", {"prov:type": "prov:Person"})
            relate("wasAttributedTo", ("entity", "agent"), workflow, person, shared=True)
            previous = workflow
            continue
        if "record" not in payload:
            continue
        step, record = payload["step"], payload["record"]
        activity = node("activity", f"step/{run}/{step}", {Q + "kind": record["kind"], **{
            Q + k: json.dumps(record[k], sort_keys=True) for k in
            ("seed_transpiler", "seed_simulator", "optimization_level", "shots") if k in record}})
        executor = node("agent", f"principal/{content['principal']}", {"prov:type": "prov:SoftwareAgent"})
        relate("wasAssociatedWith", ("activity", "agent"), activity, executor)
        relate("used", ("activity", "entity"), activity, previous)
        if isinstance(record.get("backend"), dict):
            backend = node("agent", f"backend/{record['backend']['name']}", {})
            relate("wasAssociatedWith", ("activity", "agent"), activity, backend)
        for key, names in (("circuit_source", ("media_type",)),
                           ("calibration", ("backend", "last_update_date"))):
            if isinstance(record.get(key), dict):
                used = record[key]
                entity = node("entity", f"{key}/{used['sha256']}", {
                    Q + "sha256": used["sha256"], **{Q + n: str(used[n]) for n in names if n in used}})
                relate("used", ("activity", "entity"), activity, entity)
        for name, dataset in sorted(record.get("datasets", {}).items()):
            data = node("entity", f"dataset/{dataset['sha256']}",
                        {Q + "sha256": dataset["sha256"], Q + "name": name})
            relate("used", ("activity", "entity"), activity, data)
        digest = (record.get("qasm3_sha256") or record.get("artifacts", {}).get("counts", {}).get("sha256")
                  or record.get("result_sha256")
                  or hashlib.sha256(b"\x00" + json.dumps(record, sort_keys=True).encode()).hexdigest())
        output = node("entity", f"{record['kind']}/{run}/{step}", {Q + "sha256": digest})
        relate("wasGeneratedBy", ("entity", "activity"), output, activity)
        relate("wasDerivedFrom", ("generatedEntity", "usedEntity"), output, previous)
        previous = output
    return doc


def test_a_bundles_lineage_follows_from_its_entries_by_the_documented_rules(
        service_factory: ServiceFactory) -> None:
    service = service_factory()
    workflow = load("sweep_qasm3")  # a circuit the user brought, datasets, a sweep's chunks
    run_id = service.submit(workflow).run.run_id
    service.watch(run_id)
    keys = KeyStore(service.home)
    data = export_bundle(service.app, UUID(run_id), export_key(service.app, keys), keys.load(CHECKPOINTER))
    predicate = json.loads(base64.b64decode(json.loads(data)["payload"]))["predicate"]
    run_entries = [e for e in predicate["entries"]
                   if json.loads(base64.b64decode(e["envelope"]["payload"]))["stream_id"] == run_id]
    assert len(run_entries) > 8
    assert rfc8785.dumps(lineage_by_the_rules(predicate["origin"], run_entries)) == rfc8785.dumps(
        predicate["lineage"])
