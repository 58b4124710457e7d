"""Lineage as W3C PROV, derived only from ledger entries, one entry at a time.

Entities: the workflow definition and input datasets (named by content hash, so they are
shared by every run that used them), the synthesised and transpiled circuits, the result
(counts) and the report.  Activities: the run's steps, with their settings.  Agents: the
submitting principal, the executor, the backend.  Every node carries the ledger position and
leaf hash of the entry it comes from, so the graph can be checked against the ledger (and
is, in ``verify-bundle``).

``entry_lineage`` is the one derivation: a run's PROV document folds it over the run's
entries, and the lineage projection folds it over the whole log.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from prov.model import ProvDocument

from qledger.ledger import dsse, merkle
from qledger.ledger.content import EntryContent

NS = "qledger"
NS_URI = "https://qledger.dev/ns#"

# relation -> the PROV-JSON keys of its source (the later thing) and target (the earlier).
RELATION_ENDS = {
    "used": ("prov:activity", "prov:entity"),
    "wasGeneratedBy": ("prov:entity", "prov:activity"),
    "wasDerivedFrom": ("prov:generatedEntity", "prov:usedEntity"),
    "wasAssociatedWith": ("prov:activity", "prov:agent"),
    "wasAttributedTo": ("prov:entity", "prov:agent"),
}
NODE_KINDS = ("entity", "activity", "agent")


@dataclass(frozen=True)
class Node:
    id: str
    kind: str  # entity, activity or agent
    attributes: dict[str, Any]

    @property
    def position(self) -> int:
        return int(self.attributes[f"{NS}:ledger_position"])

    @property
    def sha256(self) -> str | None:
        value = self.attributes.get(f"{NS}:sha256")
        return None if value is None else str(value)


@dataclass(frozen=True)
class Relation:
    """A PROV relation, always pointing from the later thing (source) to the earlier (target)."""

    id: str
    relation: str
    source: str
    target: str


@dataclass
class EntryLineage:
    nodes: list[Node] = field(default_factory=list)
    relations: list[Relation] = field(default_factory=list)
    # The run's newest output entity: what the next step derives from.
    output: str | None = None


def entry_lineage(origin: str, position: int, leaf_hash: str, content: EntryContent,
                  previous: str | None) -> EntryLineage:
    """The nodes and relations one run entry adds; ``previous`` is the run's last output."""
    out = EntryLineage(output=previous)
    run, payload = content.stream_id, content.payload
    where = {f"{NS}:ledger_position": position, f"{NS}:leaf_hash": leaf_hash, f"{NS}:origin": origin}
    counter = iter(range(1, 1000))

    def relate(relation: str, source: str, target: str, shared: bool = False) -> None:
        # Explicit relation ids: blank nodes would be renumbered by every reader.  A relation
        # between shared nodes is named by its ends, so every run states the same one once.
        name = (hashlib.sha256(f"{source}\n{target}".encode()).hexdigest()[:32] if shared
                else f"{run}/{position}.{next(counter)}")
        out.relations.append(Relation(f"{NS}:{relation}/{name}", relation, source, target))

    def node(kind: str, name: str, attributes: dict[str, Any]) -> str:
        out.nodes.append(Node(name, kind, {**attributes, **where}))
        return name

    if "workflow_sha256" in payload and previous is None:
        sha = str(payload["workflow_sha256"])
        workflow = node("entity", f"{NS}:workflow/{sha}", {
            f"{NS}:sha256": sha, f"{NS}:name": str(payload.get("workflow", {}).get("name", ""))})
        client = node("agent", f"{NS}:principal/{content.principal}", {"prov:type": "prov:Person"})
        relate("wasAttributedTo", workflow, client, shared=True)
        out.output = workflow
        return out
    if "record" not in payload or previous is None:
        return out  # Completed, Failed, Cancelled: no artifact of their own
    step, record = str(payload["step"]), payload["record"]
    kind = str(record.get("kind", step))
    activity = node("activity", f"{NS}:step/{run}/{step}", {
        f"{NS}:kind": kind, **{f"{NS}:{k}": json.dumps(record[k], sort_keys=True) for k in
                               ("seed_transpiler", "seed_simulator", "optimization_level", "shots")
                               if k in record}})
    executor = node("agent", f"{NS}:principal/{content.principal}", {"prov:type": "prov:SoftwareAgent"})
    relate("wasAssociatedWith", activity, executor)
    relate("used", activity, previous)
    if isinstance(record.get("backend"), dict):
        backend = node("agent", f"{NS}:backend/{record['backend']['name']}", {})
        relate("wasAssociatedWith", activity, backend)
    # What the step used besides its input: the circuit text a user brought, a device's
    # calibration snapshot; both named by digest, so runs that used the same one share the node.
    for key, attributes in (("circuit_source", ("media_type",)),
                            ("calibration", ("backend", "last_update_date"))):
        used = record.get(key)
        if isinstance(used, dict) and isinstance(used.get("sha256"), str):
            described = {f"{NS}:sha256": used["sha256"],
                         **{f"{NS}:{a}": str(used[a]) for a in attributes if a in used}}
            entity = node("entity", f"{NS}:{key}/{used['sha256']}", described)
            relate("used", activity, entity)
    for name, dataset in sorted(record.get("datasets", {}).items()):
        data = node("entity", f"{NS}:dataset/{dataset['sha256']}", {
            f"{NS}:sha256": dataset["sha256"], f"{NS}:name": name})
        relate("used", activity, data)
    # An output is named by its artifact's digest where it has one (circuit text, full counts),
    # so an auditor holding the artifact can look its lineage up by hashing it.
    digest = (record.get("qasm3_sha256") or record.get("artifacts", {}).get("counts", {}).get("sha256")
              or record.get("result_sha256")
              or merkle.leaf_hash(json.dumps(record, sort_keys=True).encode()).hex())
    output = node("entity", f"{NS}:{kind}/{run}/{step}", {f"{NS}:sha256": digest})
    relate("wasGeneratedBy", output, activity)
    relate("wasDerivedFrom", output, previous)
    out.output = output
    return out


def run_lineage(origin: str, entries: Sequence[tuple[int, bytes]]) -> EntryLineage:
    """Every node and relation of one run, from its (position, envelope bytes) in stream order."""
    total = EntryLineage()
    for position, envelope in entries:
        content = EntryContent.from_bytes(dsse.parse(envelope).payload)
        step = entry_lineage(origin, position, merkle.leaf_hash(envelope).hex(), content, total.output)
        total.nodes += step.nodes
        total.relations += step.relations
        total.output = step.output
    return total


def prov_document(nodes: Iterable[Node], relations: Iterable[Relation]) -> ProvDocument:
    """A PROV document of these nodes (the first of each id wins) and relations."""
    doc = ProvDocument()
    doc.add_namespace(NS, NS_URI)
    seen: set[str] = set()
    for n in nodes:
        if n.id not in seen:
            seen.add(n.id)
            getattr(doc, n.kind)(n.id, other_attributes=n.attributes)
    for r in relations:
        getattr(doc, r.relation)(r.source, r.target, identifier=r.id)
    return doc


def lineage_document(origin: str, entries: Sequence[tuple[int, bytes]]) -> ProvDocument:
    lineage = run_lineage(origin, entries)
    return prov_document(lineage.nodes, lineage.relations)


def lineage_json(origin: str, entries: Sequence[tuple[int, bytes]]) -> dict[str, Any]:
    return document_json(lineage_document(origin, entries))


def document_json(document: ProvDocument) -> dict[str, Any]:
    return cast(dict[str, Any], json.loads(cast(str, document.serialize(format="json"))))


def lineage_dot(document: ProvDocument) -> str:
    """Graphviz DOT: entities as ellipses, activities as boxes, agents as houses (PROV's shapes)."""
    lines = ["digraph lineage {", "  rankdir=BT;", '  node [fontname="Helvetica", fontsize=10];',
             '  edge [fontname="Helvetica", fontsize=8];']
    shapes = {"entity": 'shape=ellipse, style=filled, fillcolor="#fffc87"',
              "activity": 'shape=box, style=filled, fillcolor="#9fb1fc"',
              "agent": 'shape=house, style=filled, fillcolor="#fed37f"'}
    data = document_json(document)
    for kind, style in shapes.items():
        for name, attributes in data.get(kind, {}).items():
            label = _label(name, attributes)
            lines.append(f"  {_quote(name)} [{style}, label={_quote(label)}, tooltip={_quote(name)}];")
    for relation, (a, b) in RELATION_ENDS.items():
        for edge in data.get(relation, {}).values():
            lines.append(f"  {_quote(edge[a])} -> {_quote(edge[b])} [label={_quote(relation)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _label(name: str, attributes: dict[str, Any]) -> str:
    short = name.split(":", 1)[-1]
    kind, _, rest = short.partition("/")
    tail = rest.rsplit("/", 1)[-1]
    label = f"{kind}\n{tail[:24]}"
    position = attributes.get(f"{NS}:ledger_position")
    if isinstance(position, dict):  # PROV-JSON types integers as {"$": n, "type": "xsd:int"}
        position = position.get("$")
    return label + (f"\n@{position}" if position is not None else "")


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
