"""The store's hot artifact table, the staging that commits artifacts with their entries, and
archiving from the table to a content-addressed directory."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eventsourcing.persistence import PersistenceError
from psycopg import DatabaseError

from qledger.ledger.artifacts import ArchiveDirectory, ArchiveError, ArtifactStore
from qledger.ledger.content import artifact_ref
from qledger.ledger.store.chain_writer import ChainWriter
from qledger.ledger.store.ledger_tables import ARTIFACTS_DDL


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


