"""Large artifacts (circuits, full counts) by digest: hot in the store, or archived to a
content-addressed directory.

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
import sqlite3
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eventsourcing.persistence import PersistenceError
from psycopg import DatabaseError

from ledger.content import artifact_ref
from ledger.errors import QledgerError
from ledger.store.chain_writer import ChainWriter
from ledger.store.ledger_tables import ARTIFACTS_DDL

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


class HotArtifacts(ArtifactStore):
    """The store's own table: where the executor puts artifacts as it records steps."""

    def __init__(self, writer: ChainWriter) -> None:
        self.writer = writer
        self._sql = writer.sql

    def create_table(self) -> None:
        with self.writer.write_transaction() as cursor:
            cursor.execute(self._sql(ARTIFACTS_DDL))

    def exists(self) -> bool:
        try:
            self.get_many(["0" * 64])
        except (PersistenceError, DatabaseError, sqlite3.Error):
            return False
        return True

    def ensure_table(self) -> None:
        """``create_table`` unless it is there: the service role may not CREATE."""
        if not self.exists():
            self.create_table()

    def put(self, data: bytes, media_type: str) -> dict[str, Any]:
        ref = artifact_ref(data, media_type)
        with self.writer.write_transaction() as cursor:
            cursor.execute(self._sql("INSERT INTO {artifacts} (sha256, media_type, size, data) VALUES "
                                     "({p}, {p}, {p}, {p}) ON CONFLICT (sha256) DO NOTHING"),
                           (ref["sha256"], media_type, len(data), data))
        return ref

    def get(self, sha256: str) -> bytes | None:
        found = self.get_many([sha256])
        return found.get(sha256)

    def get_many(self, digests: Sequence[str]) -> dict[str, bytes]:
        if not digests:
            return {}
        marks = self.writer.in_list(len(digests))
        with self.writer.read_transaction() as cursor:
            cursor.execute(self._sql(f"SELECT sha256, data FROM {{artifacts}} WHERE sha256 IN ({marks})"),
                           tuple(digests))
            return {r["sha256"]: bytes(r["data"]) for r in cursor.fetchall()}

    def listing(self, min_bytes: int = 0) -> list[tuple[str, str, int]]:
        """(sha256, media type, size) of every hot artifact of at least ``min_bytes``."""
        with self.writer.read_transaction() as cursor:
            cursor.execute(self._sql("SELECT sha256, media_type, size FROM {artifacts} WHERE size >= {p} "
                                     "ORDER BY sha256"), (min_bytes,))
            return [(r["sha256"], r["media_type"], int(r["size"])) for r in cursor.fetchall()]

    def delete(self, digests: Sequence[str]) -> None:
        if not digests:
            return
        marks = self.writer.in_list(len(digests))
        with self.writer.write_transaction() as cursor:
            cursor.execute(self._sql(f"DELETE FROM {{artifacts}} WHERE sha256 IN ({marks})"), tuple(digests))


class StagedArtifacts(ArtifactStore):
    """Writes each artifact in the same transaction as the next entries this thread saves,
    so an entry and the artifacts it references commit together or not at all."""

    def __init__(self, writer: ChainWriter) -> None:
        self.writer, self.hot = writer, HotArtifacts(writer)

    def put(self, data: bytes, media_type: str) -> dict[str, Any]:
        ref = artifact_ref(data, media_type)
        self.writer.stage_artifact(ref["sha256"], media_type, data)
        return ref

    def get(self, sha256: str) -> bytes | None:
        return self.hot.get(sha256)


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
class ArchiveResult:
    moved: int = 0
    bytes: int = 0


def archive(hot: HotArtifacts, directory: ArchiveDirectory, min_bytes: int = 0,
            batch: int = 100) -> ArchiveResult:
    """Move hot artifacts of at least ``min_bytes`` to ``directory``.

    Each is written, read back and checked against its digest before its hot copy is
    deleted, so an interruption at any point loses nothing; running again finishes the job.
    """
    result = ArchiveResult()
    listing = hot.listing(min_bytes)
    for start in range(0, len(listing), batch):
        digests = [sha for sha, _, _ in listing[start:start + batch]]
        blobs = hot.get_many(digests)
        moved = []
        for sha, media_type, _ in listing[start:start + batch]:
            data = blobs.get(sha)
            if data is None or hashlib.sha256(data).hexdigest() != sha:
                continue  # altered in the hot table: leave it where verify will report it
            directory.put(data, media_type)
            copy = directory.get(sha)
            if copy is None or hashlib.sha256(copy).hexdigest() != sha:
                raise ArchiveError(f"archived copy of {sha} does not read back intact")
            moved.append(sha)
            result.bytes += len(data)
        hot.delete(moved)
        result.moved += len(moved)
    return result


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

    def __init__(self, hot: HotArtifacts | None, archived: ArchiveDirectory | None) -> None:
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
