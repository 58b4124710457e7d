"""Circuit templates as ledger entries: versioned, signed by their author, named ``name@version``.

One ``CircuitTemplates`` aggregate per ledger lists them; registering a version is one entry
signed by its author that names the source by digest (the bytes are an artifact, stored with
the entry), with its format, parameters and width.  A version is never replaced: a changed
circuit is a new version.  A workflow names one as ``{"template": "bell@1"}`` and runs exactly
the bytes that digest names; an approver may approve a version by its digest for restricted
backends.  The built-in examples (bell, ghz, qaoa_maxcut) are registered at ``qledger init``,
written in OpenQASM 3 (``executor/templates``).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import IntegrityError

from qledger.ledger.app import LedgerApp
from qledger.ledger.errors import AlreadyExistsError, DefinitionError, NotFoundError, PreconditionError
from qledger.ledger.keys import SigningKey
from qledger.ledger.store.artifacts import HotArtifacts, StagedArtifacts
from qledger.ledger.topics import wire_topics
from qledger.runs.circuit_source import FORMATS, CircuitError, parse_source

TEMPLATE_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")
TEMPLATE_REF = re.compile(r"([a-z][a-z0-9_-]{0,63})@([1-9][0-9]{0,5})")
BUILTINS = Path(__file__).resolve().parents[1] / "templates"
BUILTIN_AUTHOR = "root"
SUFFIXES = {".qasm": "qasm3", ".qasm3": "qasm3", ".qasm2": "qasm2", ".qpy": "qpy"}


class TemplateError(DefinitionError):
    """A template cannot be registered as given."""

    hint = "fix the template file or its name"


@dataclass(frozen=True)
class TemplateSource:
    """A registered version, resolved: what a workflow naming it runs."""

    ref: str
    author: str
    format: str
    data: bytes
    sha256: str

    def circuit_member(self) -> dict[str, Any]:
        """The source-form ``circuit`` member these bytes are."""
        if self.format == "qpy":
            return {"format": "qpy", "qpy": base64.b64encode(self.data).decode()}
        return {"format": self.format, "source": self.data.decode("utf-8")}


Resolver = Callable[[str], TemplateSource | None]


@wire_topics("executor.templates")
class CircuitTemplates(Aggregate):
    """The ledger's registered circuit templates, every version of each."""

    @staticmethod
    def create_id(origin: str) -> UUID:
        return uuid5(NAMESPACE_URL, f"qledger:templates:{origin}")

    @event("Created")
    def __init__(self, *, principal: str, origin: str) -> None:
        self.versions: dict[str, list[dict[str, Any]]] = {}

    @event("Registered")
    def register(self, *, principal: str, name: str, version: int, source_format: str,
                 source: dict[str, Any], parameters: list[str], qubits: int, clbits: int,
                 description: str) -> None:
        """``source`` is the artifact reference of the bytes (sha256, size, media type)."""
        self.versions.setdefault(name, []).append({
            "ref": f"{name}@{version}", "name": name, "version": version, "author": principal,
            "format": source_format, "sha256": source["sha256"], "media_type": source["media_type"],
            "bytes": source["size"], "parameters": parameters, "qubits": qubits, "clbits": clbits,
            "description": description})

    def get(self, ref: str) -> dict[str, Any] | None:
        match = TEMPLATE_REF.fullmatch(ref)
        if match is None:
            return None
        name, version = match.group(1), int(match.group(2))
        return next((v for v in self.versions.get(name, []) if v["version"] == version), None)

    def listing(self) -> list[dict[str, Any]]:
        return [v for name in sorted(self.versions) for v in self.versions[name]]


def catalog(app: LedgerApp) -> CircuitTemplates | None:
    return cast(CircuitTemplates | None, app.find(CircuitTemplates.create_id(app.require_origin())))


def resolver(app: LedgerApp) -> Resolver:
    """Template references resolved against this ledger, as it is when each is asked for."""
    hot = HotArtifacts(app.ledger)

    def resolve(ref: str) -> TemplateSource | None:
        templates = catalog(app)
        found = templates.get(ref) if templates is not None else None
        if found is None:
            return None
        data = hot.get(found["sha256"])
        if data is None:
            raise NotFoundError(f"the source of template {ref} ({found['sha256'][:12]}) is not in the "
                                "hot artifact table; restore it from the archive",
                                "workflow.circuit.template")
        if hashlib.sha256(data).hexdigest() != found["sha256"]:
            raise PreconditionError(f"the stored source of template {ref} does not match the digest its "
                                    "signed entry names: the artifact table was altered",
                                    "workflow.circuit.template")
        return TemplateSource(ref, found["author"], found["format"], data, found["sha256"])

    return resolve


def template_format(path: Path, given: str | None) -> str:
    fmt = given or SUFFIXES.get(path.suffix.lower())
    if fmt not in FORMATS:
        raise TemplateError("format", f"say --source-format (one of {sorted(FORMATS)}); {path.suffix!r} "
                            "does not tell")
    return fmt


def register(app: LedgerApp, author: SigningKey, name: str, fmt: str, data: bytes, description: str = "",
             version: int | None = None) -> dict[str, Any]:
    """Register the next version of ``name`` (or exactly ``version``), signed by ``author``."""
    if not TEMPLATE_NAME.fullmatch(name):
        raise TemplateError("name", "is 1-64 characters of a-z, 0-9, '-' and '_', starting with a letter")
    member = TemplateSource("", author.principal, fmt, data, "").circuit_member()
    try:
        loaded = parse_source(member)
    except CircuitError as exc:
        raise TemplateError(exc.field.replace("circuit.", "template "), exc.description) from exc
    app.add_signer(author)
    for _ in range(3):  # another author may register at the same moment: read again, then retry
        templates = catalog(app) or CircuitTemplates(principal=author.principal, origin=app.require_origin())
        taken = [v["version"] for v in templates.versions.get(name, [])]
        chosen = version if version is not None else max(taken, default=0) + 1
        if chosen in taken:
            raise AlreadyExistsError(f"template {name}@{chosen} is registered; a version never changes, "
                                     "register a new one", "version")
        ref = StagedArtifacts(app.ledger).put(data, loaded.media_type)
        templates.register(principal=author.principal, name=name, version=chosen, source_format=fmt,
                           source=ref, parameters=list(loaded.parameters), qubits=loaded.circuit.num_qubits,
                           clbits=loaded.circuit.num_clbits, description=description)
        try:
            app.save(templates)
        except IntegrityError:
            continue
        found = templates.get(f"{name}@{chosen}")
        assert found is not None
        return found
    raise AlreadyExistsError(f"template {name} is being registered by others; try again", "name")


def register_builtins(app: LedgerApp, root: SigningKey) -> list[str]:
    """The shipped examples, registered once by root; the references registered now."""
    templates = catalog(app)
    added = []
    for path in sorted(BUILTINS.glob("*.qasm")):
        if templates is not None and templates.get(f"{path.stem}@1") is not None:
            continue
        found = register(app, root, path.stem, "qasm3", path.read_bytes(),
                         description=path.read_text(encoding="utf-8").splitlines()[0].lstrip("/ "),
                         version=1)
        added.append(found["ref"])
    return added
