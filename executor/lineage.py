"""A run's lineage as W3C PROV, derived only from its ledger entries.

Entities: the workflow definition, input datasets, the synthesised and transpiled circuits,
the result (counts) and the report.  Activities: the run's steps, with their settings.
Agents: the submitting principal, the executor, the backend.  Every node carries the ledger
position and leaf hash of the entry it comes from, so the graph can be checked against the
ledger (and is, in ``verify-bundle``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, cast

from prov.model import ProvDocument

from ledger import dsse, merkle
from ledger.content import EntryContent

NS = "qledger"
NS_URI = "https://qledger.dev/ns#"


def lineage_document(origin: str, entries: Sequence[tuple[int, bytes]]) -> ProvDocument:
    """PROV for one run from its (position, envelope bytes) entries, in stream order."""
    doc = ProvDocument()
    doc.add_namespace(NS, NS_URI)
    contents = [(p, merkle.leaf_hash(e).hex(), EntryContent.from_bytes(dsse.parse(e).payload))
                for p, e in entries]
    if not contents:
        return doc
    _, _, submitted = contents[0]
    run = submitted.stream_id

    def ids(kind: str, name: str) -> str:
        return f"{NS}:{kind}/{run}/{name}"

    counter = iter(range(1, 10**6))

    def rel(kind: str) -> str:
        # Explicit relation ids: blank nodes would be renumbered by every reader.
        return f"{NS}:{kind}/{run}/{next(counter)}"

    def where(position: int, leaf: str) -> dict[Any, Any]:
        return {f"{NS}:ledger_position": position, f"{NS}:leaf_hash": leaf, f"{NS}:origin": origin}

    position, leaf, _ = contents[0]
    client = doc.agent(f"{NS}:principal/{submitted.principal}", {"prov:type": "prov:Person"})
    workflow = doc.entity(ids("workflow", submitted.payload["workflow_sha256"]), {
        f"{NS}:sha256": submitted.payload["workflow_sha256"], **where(position, leaf)})
    doc.wasAttributedTo(workflow, client, identifier=rel("wasAttributedTo"))
    previous = workflow
    for position, leaf, content in contents[1:]:
        payload = content.payload
        if "step" not in payload:
            continue
        step, record = str(payload["step"]), payload["record"]
        activity = doc.activity(ids("step", step), other_attributes={
            f"{NS}:kind": str(record.get("kind", step)), **where(position, leaf),
            **{f"{NS}:{k}": json.dumps(record[k], sort_keys=True) for k in
               ("seed_transpiler", "seed_simulator", "optimization_level", "shots") if k in record}})
        doc.wasAssociatedWith(activity, f"{NS}:principal/{content.principal}",
                              identifier=rel("wasAssociatedWith"))
        doc.agent(f"{NS}:principal/{content.principal}", {"prov:type": "prov:SoftwareAgent"})
        doc.used(activity, previous, identifier=rel("used"))
        if isinstance(record.get("backend"), dict):
            backend = doc.agent(f"{NS}:backend/{record['backend']['name']}")
            doc.wasAssociatedWith(activity, backend, identifier=rel("wasAssociatedWith"))
        for name, dataset in sorted(record.get("datasets", {}).items()):
            data = doc.entity(ids("dataset", name), {f"{NS}:sha256": dataset["sha256"]})
            doc.used(activity, data, identifier=rel("used"))
        digest = record.get("qasm3_sha256") or merkle.leaf_hash(json.dumps(
            record, sort_keys=True).encode()).hex()
        output = doc.entity(ids(str(record.get("kind", step)), step), {
            f"{NS}:sha256": digest, **where(position, leaf)})
        doc.wasGeneratedBy(output, activity, identifier=rel("wasGeneratedBy"))
        doc.wasDerivedFrom(output, previous, identifier=rel("wasDerivedFrom"))
        previous = output
    return doc


def lineage_json(origin: str, entries: Sequence[tuple[int, bytes]]) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(cast(str, lineage_document(origin, entries).serialize(format="json")))
    return value


def lineage_dot(document: ProvDocument) -> str:
    """Graphviz DOT: entities as ellipses, activities as boxes, agents as houses."""
    lines = ["digraph lineage {", "  rankdir=BT;"]
    shapes = {"entity": "ellipse", "activity": "box", "agent": "house"}
    data = json.loads(cast(str, document.serialize(format="json")))
    for kind, shape in shapes.items():
        for name in data.get(kind, {}):
            lines.append(f'  "{name}" [shape={shape}];')
    for relation, (a, b) in {"used": ("prov:activity", "prov:entity"),
                             "wasGeneratedBy": ("prov:entity", "prov:activity"),
                             "wasDerivedFrom": ("prov:generatedEntity", "prov:usedEntity"),
                             "wasAssociatedWith": ("prov:activity", "prov:agent"),
                             "wasAttributedTo": ("prov:entity", "prov:agent")}.items():
        for edge in data.get(relation, {}).values():
            lines.append(f'  "{edge[a]}" -> "{edge[b]}" [label="{relation}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"
