"""The exported log: JSON Lines an auditor can verify with no database (FORMAT.md, "Exported log").

Line order: one ``ledger`` header, then every ``key``, every ``checkpoint``, and the
``entry`` lines in position order, so a reader needs keys and checkpoints only once and
can stream the entries in constant memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from qledger.ledger.canonical import canonical_bytes
from qledger.ledger.errors import LogFormatError
from qledger.ledger.source import EntryRow, KeyRow, LedgerSource

FORMAT = "qledger-log/1"


def write_log(source: LedgerSource, out: IO[str]) -> int:
    """Write ``source`` as JSON Lines to ``out``; return the number of entries written."""
    def line(obj: dict[str, Any]) -> None:
        out.write(canonical_bytes(obj).decode() + "\n")

    line({"type": "ledger", "format": FORMAT, "origin": source.origin(),
          "tree_size": source.tree_size()})
    for key in source.key_rows():
        line({"type": "key", "key_id": key.key_id, "principal": key.principal,
              "public_key": key.public_key.hex(), "purpose": key.purpose,
              "registered_at": key.registered_at, "revoked_at": key.revoked_at})
    for note in source.checkpoint_notes():
        line({"type": "checkpoint", "note": note})
    count = 0
    for row in source.entries(1, None):
        if row.state is None:
            raise LogFormatError(f"entry {row.position} has no stored event; verify the store first")
        line({"type": "entry", "position": row.position, "envelope": json.loads(row.state),
              "leaf_hash": row.leaf_hash.hex(), "chain_hash": row.chain_hash.hex()})
        count += 1
    return count


class LogFileSource(LedgerSource):
    def __init__(self, path: Path) -> None:
        self.path = path
        self._header: dict[str, Any] | None = None
        self._keys: list[KeyRow] = []
        self._notes: list[str] = []
        self._scan()

    def _lines(self) -> Iterator[tuple[int, dict[str, Any]]]:
        try:
            with self.path.open(encoding="utf-8") as fh:
                for number, text in enumerate(fh, 1):
                    try:
                        obj = json.loads(text)
                    except json.JSONDecodeError as exc:
                        raise LogFormatError(f"{self.path}:{number}: not JSON: {exc.msg}") from exc
                    if not isinstance(obj, dict) or "type" not in obj:
                        raise LogFormatError(f"{self.path}:{number}: a line must be an object with type")
                    # One spelling per line: a log that differs from what was exported by
                    # even one byte is refused, never reinterpreted.
                    if canonical_bytes(obj) + b"\n" != text.encode():
                        raise LogFormatError(f"{self.path}:{number}: line is not canonical JSON")
                    for name in ("leaf_hash", "chain_hash", "public_key"):
                        if name in obj and obj[name] != str(obj[name]).lower():
                            raise LogFormatError(f"{self.path}:{number}: {name} must be lowercase hex")
                    yield number, obj
        except OSError as exc:
            raise LogFormatError(f"cannot read {self.path}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise LogFormatError(f"{self.path} is not UTF-8") from exc

    def _scan(self) -> None:
        for number, obj in self._lines():
            try:
                kind = obj["type"]
                if kind == "ledger":
                    if obj.get("format") != FORMAT:
                        raise LogFormatError(f"unsupported log format {obj.get('format')!r}")
                    self._header = obj
                elif kind == "key":
                    self._keys.append(KeyRow(str(obj["key_id"]), str(obj["principal"]),
                                             bytes.fromhex(obj["public_key"]), str(obj["purpose"]),
                                             int(obj["registered_at"]),
                                             None if obj["revoked_at"] is None
                                             else int(obj["revoked_at"])))
                elif kind == "checkpoint":
                    self._notes.append(str(obj["note"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise LogFormatError(f"{self.path}:{number}: malformed {obj.get('type')} line") from exc
        if self._header is None:
            raise LogFormatError(f"{self.path} has no ledger header line")

    def origin(self) -> str | None:
        assert self._header is not None
        origin = self._header.get("origin")
        return origin if isinstance(origin, str) else None

    def tree_size(self) -> int:
        assert self._header is not None
        return int(self._header.get("tree_size", 0))

    def key_rows(self) -> list[KeyRow]:
        return list(self._keys)

    def checkpoint_notes(self) -> list[str]:
        return list(self._notes)

    def entries(self, start: int, stop: int | None) -> Iterator[EntryRow]:
        for number, obj in self._lines():
            if obj["type"] != "entry":
                continue
            try:
                position = int(obj["position"])
                row = EntryRow(position=position,
                               leaf_hash=bytes.fromhex(obj["leaf_hash"]),
                               chain_hash=bytes.fromhex(obj["chain_hash"]),
                               state=canonical_bytes(obj["envelope"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise LogFormatError(f"{self.path}:{number}: malformed entry line") from exc
            if position < start:
                continue
            if stop is not None and position > stop:
                return
            yield row
