"""The verifier: recompute every hash, check every signature and checkpoint, name the first break.

Work is split so that ``--jobs`` scales: each entry's self-contained checks (canonical
form, signature maths) run in worker processes; the order-dependent checks (positions,
chain, Merkle tree, key validity at each position, checkpoints) run in one pass here.
Memory is one batch of entries, whatever the ledger's size.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import islice
from typing import Any

from qledger.ledger import dsse, merkle
from qledger.ledger.chain import chain_hash
from qledger.ledger.checkpoint import parse_note
from qledger.ledger.errors import (
    NoteFormatError,
    QledgerError,
    RevokedKeyError,
    UnknownKeyError,
)
from qledger.ledger.registry import KeyRegistry, valid_at
from qledger.ledger.source import EntryRow, KeyRow, LedgerSource, RangeReader
from qledger.ledger.verify_entry import EntryVerdict, check_range, check_rows

BATCH = 1000
AHEAD = 1  # batches read here and handed to the workers beyond the one being settled


class Tamper(StrEnum):
    PAYLOAD_ALTERED = "payload altered"
    BAD_SIGNATURE = "bad signature"
    UNKNOWN_KEY = "unknown key"
    REVOKED_KEY = "revoked key"
    UNAUTHORISED_KEY = "unauthorised key"
    MISSING_ENTRY = "missing entry"
    REORDERED = "reordered"
    CHAIN_BROKEN = "chain broken"
    MERKLE_NODE_ALTERED = "merkle node altered"
    CHECKPOINT_MISMATCH = "checkpoint mismatch"
    TRUNCATED_TAIL = "truncated tail"
    UNCHAINED_EVENT = "unchained event"
    KEY_TABLE_ALTERED = "key table altered"
    ARTIFACT_ALTERED = "artifact altered"


@dataclass(frozen=True)
class Finding:
    position: int
    kind: Tamper
    detail: str

    def __str__(self) -> str:
        return f"position {self.position}: {self.kind.value}: {self.detail}"


@dataclass
class VerifyReport:
    entries_checked: int = 0
    checkpoints_checked: int = 0
    tree_size: int = 0
    root_hash: bytes = merkle.EMPTY_ROOT
    finding: Finding | None = None

    @property
    def ok(self) -> bool:
        return self.finding is None


# --- the ordered pass ------------------------------------------------------------------


@dataclass
class _Pass:
    source: LedgerSource
    origin: str | None
    chain: bytes
    frontier: merkle.Frontier
    registry: KeyRegistry
    expected: int
    checkpoints: dict[int, str] = field(default_factory=dict)
    last_notification: int | None = None
    checked_notes: int = 0


def _batches(rows: Iterator[EntryRow], size: int) -> Iterator[list[EntryRow]]:
    while batch := list(islice(rows, size)):
        yield batch


# Given the (position, sha256) of each artifact a verified batch references: the first
# (position, reason) of a problem.
BatchCheck = Callable[[list[tuple[int, str]]], tuple[int, str] | None]
Verdicts = list[EntryVerdict | None]
Task = tuple[dict[str, bytes], str | None, bool]  # check_rows' arguments after the rows
Checked = Callable[[], tuple[list[EntryRow], Verdicts]]  # waits for a batch and its verdicts


def _ready(batch: list[EntryRow], verdicts: Verdicts) -> Checked:
    return lambda: (batch, verdicts)


def _gathered(batch: list[EntryRow], parts: list[Future[Verdicts]]) -> Checked:
    return lambda: (batch, [verdict for part in parts for verdict in part.result()])


class Verifier:
    def __init__(self, source: LedgerSource, jobs: int = 1,
                 progress: Callable[[int], None] | None = None,
                 artifacts: BatchCheck | None = None) -> None:
        self.artifacts = artifacts
        self.source = source
        self.jobs = max(1, jobs)
        self._reader: RangeReader | None = None  # set while a run's workers read for themselves
        self.progress = progress or (lambda n: None)

    def run(self, start: int = 1, stop: int | None = None) -> VerifyReport:
        report = VerifyReport()
        state = self.source.start_state(start)
        p = _Pass(self.source, self.source.origin(), state.chain_hash, state.frontier,
                  state.registry, start)
        # The key table is only a hint for the workers; the ordered pass checks the key the
        # entries themselves registered.
        key_hint = {k.key_id: k.public_key for k in self.source.key_rows()}
        for note in self.source.checkpoint_notes():
            try:
                size = parse_note(note).checkpoint.tree_size
            except NoteFormatError as exc:
                report.finding = Finding(0, Tamper.CHECKPOINT_MISMATCH, f"unreadable note: {exc}")
                return report
            if size in p.checkpoints:
                report.finding = Finding(size, Tamper.CHECKPOINT_MISMATCH,
                                         f"two stored checkpoints claim tree size {size}")
                return report
            p.checkpoints[size] = note
        pool = ProcessPoolExecutor(self.jobs) if self.jobs > 1 else None
        task = (key_hint, p.origin, self.artifacts is not None)
        self._reader = self.source.range_reader() if pool is not None else None
        if pool is not None and self._reader is not None:
            checked, ahead = self._checked_ranges(self._reader, start, stop, task, pool), self.jobs * 3
        else:
            checked, ahead = self._checked_batches(start, stop, task, pool), AHEAD
        # Later batches are handed out before this one's ordered pass, so the ordered pass
        # here overlaps the workers' checks.
        in_flight: deque[Checked] = deque()
        try:
            for batch in checked:
                in_flight.append(batch)
                if len(in_flight) > ahead and self._settle(p, report, in_flight.popleft()):
                    return report
            while in_flight:
                if self._settle(p, report, in_flight.popleft()):
                    return report
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
        report.tree_size = p.expected - 1
        report.root_hash = p.frontier.root()
        report.checkpoints_checked = p.checked_notes
        if stop is None:
            report.finding = self._tail(p)
        return report

    def _settle(self, p: _Pass, report: VerifyReport, checked: Checked) -> Finding | None:
        """The ordered pass over one batch whose entry checks are done (or under way)."""
        batch, verdicts = checked()
        first = p.expected
        finding = self._ordered(p, batch, verdicts)
        if finding is None and self.artifacts is not None:
            altered = self.artifacts([(row.position, sha)
                                      for row, verdict in zip(batch, verdicts, strict=True)
                                      if verdict is not None for sha in verdict.artifacts])
            if altered is not None:
                finding = Finding(altered[0], Tamper.ARTIFACT_ALTERED, altered[1])
        report.entries_checked += (p.expected if finding is None else finding.position) - first
        self.progress(len(batch))
        report.finding = finding
        return finding

    def _checked_batches(self, start: int, stop: int | None, task: Task,
                         pool: ProcessPoolExecutor | None) -> Iterator[Checked]:
        """Batches read here, each checked here or split over the workers."""
        for batch in _batches(self.source.entries(start, stop), BATCH):
            if pool is None:
                yield _ready(batch, check_rows(batch, *task))
                continue
            chunk = max(1, len(batch) // (self.jobs * 2))
            yield _gathered(batch, [pool.submit(check_rows, batch[i:i + chunk], *task)
                                    for i in range(0, len(batch), chunk)])

    def _checked_ranges(self, reader: RangeReader, start: int, stop: int | None, task: Task,
                        pool: ProcessPoolExecutor) -> Iterator[Checked]:
        """Windows of positions that each worker reads and checks by itself."""
        last = self.source.last_position(stop)
        for after in range(start - 1, last, BATCH):
            future = pool.submit(check_range, reader, after, min(after + BATCH, last), *task)
            yield future.result

    def _stored_state(self, row: EntryRow) -> bytes:
        """The envelope of ``row``, read again if a worker kept it."""
        if row.state is None:
            assert self._reader is not None  # only rows a worker read come without it
            row = self._reader(row.position - 1, row.position)[0]
        assert row.state is not None  # the worker's verdict says the event row is there
        return row.state

    def _ordered(self, p: _Pass, batch: list[EntryRow], verdicts: Verdicts) -> Finding | None:
        for i, (row, verdict) in enumerate(zip(batch, verdicts, strict=True)):
            pos = p.expected
            if row.position != pos:
                return Finding(pos, Tamper.MISSING_ENTRY,
                               f"no entry at position {pos} (next stored is {row.position})")
            if verdict is None:
                return Finding(pos, Tamper.MISSING_ENTRY, "the entry's stored event row is gone")
            if row.notification_id is not None:
                if p.last_notification is not None and row.notification_id <= p.last_notification:
                    return Finding(pos, Tamper.REORDERED,
                                   "notification ids run backwards: entries were reordered")
                p.last_notification = row.notification_id
            if not verdict.leaf_ok:
                return Finding(pos, Tamper.PAYLOAD_ALTERED, "the stored envelope's hash changed")
            if verdict.problem is not None:
                return Finding(pos, Tamper.PAYLOAD_ALTERED, verdict.problem)
            if verdict.mismatch:
                return Finding(pos, Tamper.PAYLOAD_ALTERED, verdict.mismatch)
            leaf = row.leaf_hash  # the worker found it is the stored envelope's hash
            expected_chain = chain_hash(p.chain, leaf)
            if row.chain_hash != expected_chain:
                if any(chain_hash(p.chain, later.leaf_hash) == later.chain_hash
                       for later in batch[i + 1:]):
                    return Finding(pos, Tamper.REORDERED,
                                   "a later entry belongs here: entries were reordered")
                return Finding(pos, Tamper.CHAIN_BROKEN, "chain hash does not follow its predecessor")
            finding = self._signer(p, pos, verdict, row)
            if finding:
                return finding
            p.chain = expected_chain
            completed = b"".join(p.frontier.append(leaf))
            if row.subtree_hashes is not None and row.subtree_hashes != completed:
                return Finding(pos, Tamper.MERKLE_NODE_ALTERED,
                               "stored Merkle subtree hashes differ from the recomputed ones")
            note = p.checkpoints.get(pos)
            if note is not None:
                finding = self._checkpoint(p, pos, note)
                if finding:
                    return finding
            p.expected += 1
        return None

    def _signer(self, p: _Pass, pos: int, verdict: EntryVerdict, row: EntryRow) -> Finding | None:
        payload = verdict.key_payload or {}
        try:
            record = p.registry.check_signer_of(verdict.key_id, pos, verdict.event_type,
                                                verdict.principal, payload)
        except UnknownKeyError as exc:
            return Finding(pos, Tamper.UNKNOWN_KEY, str(exc))
        except RevokedKeyError as exc:
            return Finding(pos, Tamper.REVOKED_KEY, str(exc))
        except QledgerError as exc:
            return Finding(pos, Tamper.UNAUTHORISED_KEY, str(exc))
        valid = verdict.signature_ok
        if verdict.verified_with != record.public.raw:
            # The worker used the key table, which is only a hint: the key that counts is
            # the one the entries themselves registered.  Rare, so checked here inline.
            valid = dsse.parse(self._stored_state(row)).signature_valid(record.public)
        if not valid:
            return Finding(pos, Tamper.BAD_SIGNATURE,
                           f"signature does not verify with key {verdict.key_id[:16]}…")
        try:
            p.registry.apply_of(pos, verdict.event_type, verdict.principal, payload)
        except QledgerError as exc:
            return Finding(pos, Tamper.PAYLOAD_ALTERED, f"invalid key entry: {exc}")
        return None

    @staticmethod
    def _checkpoint(p: _Pass, pos: int, note: str) -> Finding | None:
        signed = parse_note(note)
        if signed.checkpoint.root_hash != p.frontier.root():
            return Finding(pos, Tamper.CHECKPOINT_MISMATCH,
                           f"checkpoint root at size {pos} differs from the recomputed root")
        if p.origin is not None and signed.checkpoint.origin != p.origin:
            return Finding(pos, Tamper.CHECKPOINT_MISMATCH, "checkpoint names another origin")
        signers = [r for r in p.registry.keys.values()
                   if r.purpose == "checkpoint" and r.valid_for_checkpoint(pos)]
        if not any(signed.signed_by(signed.checkpoint.origin, r.public) for r in signers):
            return Finding(pos, Tamper.CHECKPOINT_MISMATCH,
                           f"checkpoint at size {pos} is not signed by a valid checkpoint key")
        p.checked_notes += 1
        return None

    def _tail(self, p: _Pass) -> Finding | None:
        size = p.expected - 1
        beyond = [s for s in p.checkpoints if s > size]
        if beyond:
            return Finding(size + 1, Tamper.TRUNCATED_TAIL,
                           f"a signed checkpoint covers {max(beyond)} entries, the log has {size}")
        unchained = self.source.unchained_events()
        if unchained:
            return Finding(size + 1, Tamper.UNCHAINED_EVENT,
                           f"stored event(s) with notification id {unchained} are in no entry")
        derived = {k: (r.principal, r.public.raw, r.purpose, r.registered_at, r.revoked_at)
                   for k, r in p.registry.keys.items()}
        stored = {k.key_id: (k.principal, k.public_key, k.purpose, k.registered_at, k.revoked_at)
                  for k in self.source.key_rows()}
        if derived != stored:
            differing = sorted(set(derived.items()) ^ set(stored.items()))
            where = min((v[3] for _, v in differing), default=0)
            return Finding(where, Tamper.KEY_TABLE_ALTERED,
                           "the key table differs from the keys the entries register")
        return None


def verify(source: LedgerSource, start: int = 1, stop: int | None = None, jobs: int = 1,
           progress: Callable[[int], None] | None = None, artifacts: BatchCheck | None = None
           ) -> VerifyReport:
    return Verifier(source, jobs, progress, artifacts).run(start, stop)


# --- one stream, as an auditor checks it ------------------------------------------------


def check_stream(rows: list[EntryRow], keys: list[KeyRow], origin: str | None,
                 inclusion: Callable[[int], dict[str, Any]]) -> Finding | None:
    """One stream's entries (a run's), checked alone: each hashes to its stored leaf, is a
    well-formed envelope that agrees with its event columns, is signed by a key registered to
    its principal and valid at its position (``registry.valid_at``, the rule the whole-ledger
    pass uses), and is included in the tree ``inclusion(position)`` proves it against.  The
    first finding, or None."""
    table = {key.key_id: key for key in keys}
    verdicts = check_rows(rows, {k.key_id: k.public_key for k in keys}, origin, False)
    for row, verdict in zip(rows, verdicts, strict=True):
        position = row.position
        if verdict is None:
            return Finding(position, Tamper.MISSING_ENTRY, "the entry has no stored event")
        if not verdict.leaf_ok:
            return Finding(position, Tamper.PAYLOAD_ALTERED, "stored leaf hash does not match the envelope")
        if verdict.problem or verdict.mismatch:
            return Finding(position, Tamper.PAYLOAD_ALTERED, str(verdict.problem or verdict.mismatch))
        key = table.get(verdict.key_id)
        if key is None:
            return Finding(position, Tamper.UNKNOWN_KEY, f"key {verdict.key_id[:16]}… is not registered")
        if key.principal != verdict.principal:
            return Finding(position, Tamper.UNAUTHORISED_KEY,
                           f"key {key.key_id[:16]}… belongs to {key.principal!r}, not {verdict.principal!r}")
        if not valid_at(key.registered_at, key.revoked_at, position):
            return Finding(position, Tamper.REVOKED_KEY, f"key {key.key_id[:16]}… is not valid at {position}")
        if not verdict.signature_ok:
            return Finding(position, Tamper.BAD_SIGNATURE, "signature does not verify")
        proof = inclusion(position)
        if not merkle.verify_inclusion(proof["leaf_index"], proof["tree_size"], row.leaf_hash,
                                       [bytes.fromhex(h) for h in proof["inclusion_path"]],
                                       bytes.fromhex(proof["root_hash"])):
            return Finding(position, Tamper.MERKLE_NODE_ALTERED, "not included in the current tree")
    return None
