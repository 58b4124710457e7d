"""Large artifacts (circuits, full counts) by digest: hot in the store, or archived to a
content-addressed directory.  This module is the pure part (references, the archive
directory, the check verify runs); the store's hot table is ``ledger.store.artifacts``.

Entries never hold an artifact, only its reference ``{"sha256", "size", "media_type"}``
(``content.artifact_ref``), and the signature covers the reference.  So an artifact can move
from the store's hot table to an archive directory (``qledger archive``) without touching a
ledger entry, and verification still holds: whatever copy is found must hash to the digest.
A copy that does not is tampering; a copy that is nowhere is reported apart from tampering,
as missing.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qledger.ledger.content import artifact_ref
from qledger.ledger.errors import QledgerError

REF_KEYS = frozenset({"sha256", "size", "media_type"})


class ArchiveError(QledgerError):
    """An archive directory cannot be read or written."""

    hint = "check --archive / $QLEDGER_ARCHIVE and its permissions"


def artifact_refs(value: Any) -> Iterator[dict[str, Any]]:
    """Every artifact reference inside a payload, depth first."""
    if isinstance(value, dict):
        if set(value) == REF_KEYS and isinstance(value["sha256"], str):
            yield value
            return
        for item in value.values():
            yield from artifact_refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from artifact_refs(item)


class ArtifactStore(ABC):
    @abstractmethod
    def get(self, sha256: str) -> bytes | None:
        """The stored bytes, as stored (the caller checks the digest), or None."""

    @abstractmethod
    def put(self, data: bytes, media_type: str) -> dict[str, Any]:
        """Keep ``data``; return its reference.  Storing the same bytes twice is a no-op."""

    def get_many(self, digests: Sequence[str]) -> dict[str, bytes]:
        """The stored bytes of each digest that is here (one round trip where the store can)."""
        found = {sha: self.get(sha) for sha in digests}
        return {sha: data for sha, data in found.items() if data is not None}


class ArchiveDirectory(ArtifactStore):
    """``ROOT/sha256/ab/abcdef...``: the layout of git's and OCI's content stores."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ArchiveError(f"{sha256!r} is not a sha256 digest")
        return self.root / "sha256" / sha256[:2] / sha256

    def get(self, sha256: str) -> bytes | None:
        try:
            return self.path(sha256).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ArchiveError(f"cannot read {self.path(sha256)}: {exc.strerror}") from exc

    def put(self, data: bytes, media_type: str) -> dict[str, Any]:
        ref = artifact_ref(data, media_type)
        target = self.path(ref["sha256"])
        if target.exists() and hashlib.sha256(target.read_bytes()).hexdigest() == ref["sha256"]:
            return ref
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # Write, flush to disk, then rename: a crash leaves the old state or the whole file.
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
            directory = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except OSError as exc:
            raise ArchiveError(f"cannot write {target}: {exc.strerror}") from exc
        return ref


@dataclass
class ArtifactCheck:
    """What verification found of the artifacts the entries reference."""

    referenced: int = 0
    hot: int = 0
    archived: int = 0
    missing: list[tuple[int, str]] = field(default_factory=list)  # (position, sha256)
    altered: tuple[int, str] | None = None  # the first (position, sha256) whose copy mismatches


class ArtifactChecker:
    """Fed each verified batch of entries: finds every referenced artifact and checks it."""

    def __init__(self, hot: ArtifactStore | None, archived: ArchiveDirectory | None) -> None:
        self.hot, self.archived = hot, archived
        self.result = ArtifactCheck()

    def check(self, wanted: Sequence[tuple[int, str]]) -> tuple[int, str] | None:
        """Given (position, sha256) of each reference: the first (position, reason) whose
        artifact copy is altered, or None."""
        if not wanted:
            return None
        self.result.referenced += len(wanted)
        hot = self.hot.get_many(sorted({sha for _, sha in wanted})) if self.hot else {}
        for position, sha in wanted:
            data, where = hot.get(sha), "hot"
            if data is None and self.archived is not None:
                data, where = self.archived.get(sha), "archived"
            if data is None:
                self.result.missing.append((position, sha))
                continue
            if hashlib.sha256(data).hexdigest() != sha:
                self.result.altered = (position, sha)
                return position, f"{where} copy of artifact {sha[:16]}… does not match its digest"
            if where == "hot":
                self.result.hot += 1
            else:
                self.result.archived += 1
        return None
