"""The verifier: recompute every hash, check every signature and checkpoint, name the first break.

Work is split so that ``--jobs`` scales: each entry's self-contained checks (canonical
form, signature maths) run in worker processes; the order-dependent checks (positions,
chain, Merkle tree, key validity at each position, checkpoints) run in one pass here.
Memory is one batch of entries, whatever the ledger's size.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import islice

from ledger import dsse, merkle
from ledger.chain import chain_hash
from ledger.checkpoint import parse_note
from ledger.content import EntryContent
from ledger.errors import (
    LogFormatError,
    QledgerError,
    RevokedKeyError,
    UnknownKeyError,
)
from ledger.keys import PublicKey
from ledger.mapper import column_mismatch
from ledger.registry import KEY_EVENT_TYPES, KeyRegistry
from ledger.source import EntryRow, LedgerSource

BATCH = 4000
AHEAD = 1  # batches handed to the workers beyond the one being settled


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


# --- per-entry checks, run in workers --------------------------------------------------


@dataclass(frozen=True)
class EnvelopeCheck:
    problem: str | None = None
    content: EntryContent | None = None
    key_id: str = ""
    signature_ok: bool = False
    verified_with: bytes | None = None  # the public key the worker used, if it knew one


def check_envelope(state: bytes, keys: dict[str, bytes]) -> EnvelopeCheck:
    try:
        envelope = dsse.parse(state)
        if envelope.payload_type != dsse.EVENT_PAYLOAD_TYPE:
            return EnvelopeCheck(problem=f"payloadType is {envelope.payload_type!r}")
        content = EntryContent.from_bytes(envelope.payload)
    except QledgerError as exc:
        return EnvelopeCheck(problem=str(exc))
    public_raw = keys.get(envelope.key_id)
    if public_raw is None and content.event_type in KEY_EVENT_TYPES:
        public_raw = bytes.fromhex(str(content.payload.get("public_key", "")))
    ok = public_raw is not None and envelope.signature_valid(PublicKey(public_raw))
    return EnvelopeCheck(content=content, key_id=envelope.key_id, signature_ok=ok,
                         verified_with=public_raw)


def check_batch(states: list[bytes | None], keys: dict[str, bytes]) -> list[EnvelopeCheck | None]:
    return [None if s is None else check_envelope(s, keys) for s in states]


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


# Given each verified batch as (position, content): the first (position, reason) of a problem.
BatchCheck = Callable[[list[tuple[int, EntryContent]]], tuple[int, str] | None]


class Verifier:
    def __init__(self, source: LedgerSource, jobs: int = 1,
                 progress: Callable[[int], None] | None = None,
                 artifacts: BatchCheck | None = None) -> None:
        self.artifacts = artifacts
        self.source = source
        self.jobs = max(1, jobs)
        self.progress = progress or (lambda n: None)

    def run(self, start: int = 1, stop: int | None = None) -> VerifyReport:
        report = VerifyReport()
        state = self.source.start_state(start)
        p = _Pass(self.source, self.source.origin(), state.chain_hash, state.frontier,
                  state.registry, start)
        key_material = {k.key_id: k.public_key for k in self.source.key_rows()}
        for note in self.source.checkpoint_notes():
            try:
                size = parse_note(note).checkpoint.tree_size
            except LogFormatError as exc:
                report.finding = Finding(0, Tamper.CHECKPOINT_MISMATCH, f"unreadable note: {exc}")
                return report
            if size in p.checkpoints:
                report.finding = Finding(size, Tamper.CHECKPOINT_MISMATCH,
                                         f"two stored checkpoints claim tree size {size}")
                return report
            p.checkpoints[size] = note
        pool = ProcessPoolExecutor(self.jobs) if self.jobs > 1 else None
        # With workers, the next batches are read and handed out before this one's ordered
        # pass, so reading and the ordered pass here overlap the workers' signature checks.
        in_flight: deque[tuple[list[EntryRow], Callable[[], list[EnvelopeCheck | None]]]] = deque()
        try:
            for batch in _batches(self.source.entries(start, stop), BATCH):
                in_flight.append((batch, self._check_envelopes(batch, key_material, pool)))
                if len(in_flight) > AHEAD:
                    finding = self._settle(p, report, *in_flight.popleft())
                    if finding is not None:
                        return report
            while in_flight:
                if self._settle(p, report, *in_flight.popleft()) is not None:
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

    def _settle(self, p: _Pass, report: VerifyReport, batch: list[EntryRow],
                checks_of: Callable[[], list[EnvelopeCheck | None]]) -> Finding | None:
        """The ordered pass over one batch whose envelope checks are done (or under way)."""
        checks = checks_of()
        finding = self._ordered(p, batch, checks)
        if finding is None and self.artifacts is not None:
            altered = self.artifacts([(row.position, check.content) for row, check
                                      in zip(batch, checks, strict=True)
                                      if check is not None and check.content is not None])
            if altered is not None:
                finding = Finding(altered[0], Tamper.ARTIFACT_ALTERED, altered[1])
        report.entries_checked += len(batch) if finding is None else (
            finding.position - batch[0].position)
        self.progress(len(batch))
        report.finding = finding
        return finding

    def _check_envelopes(self, batch: Sequence[EntryRow], keys: dict[str, bytes],
                         pool: ProcessPoolExecutor | None) -> Callable[[], list[EnvelopeCheck | None]]:
        """Start checking ``batch``; the returned call waits for the results."""
        states = [row.state for row in batch]
        if pool is None:
            checks = check_batch(states, keys)
            return lambda: checks
        chunk = max(1, len(states) // (self.jobs * 2))
        parts = [pool.submit(check_batch, states[i:i + chunk], keys)
                 for i in range(0, len(states), chunk)]
        return lambda: [check for part in parts for check in part.result()]

    def _ordered(self, p: _Pass, batch: list[EntryRow],
                 checks: list[EnvelopeCheck | None]) -> Finding | None:
        for i, (row, check) in enumerate(zip(batch, checks, strict=True)):
            pos = p.expected
            if row.position != pos:
                return Finding(pos, Tamper.MISSING_ENTRY,
                               f"no entry at position {pos} (next stored is {row.position})")
            if row.state is None or check is None:
                return Finding(pos, Tamper.MISSING_ENTRY, "the entry's stored event row is gone")
            if row.notification_id is not None:
                if p.last_notification is not None and row.notification_id <= p.last_notification:
                    return Finding(pos, Tamper.REORDERED,
                                   "notification ids run backwards: entries were reordered")
                p.last_notification = row.notification_id
            leaf = merkle.leaf_hash(row.state)
            if leaf != row.leaf_hash:
                return Finding(pos, Tamper.PAYLOAD_ALTERED, "the stored envelope's hash changed")
            if check.problem is not None or check.content is None:
                return Finding(pos, Tamper.PAYLOAD_ALTERED, check.problem or "unreadable")
            content = check.content
            mismatch = column_mismatch(content, p.origin, row.originator_id, row.originator_version,
                                       row.topic)
            if mismatch:
                return Finding(pos, Tamper.PAYLOAD_ALTERED, mismatch)
            expected_chain = chain_hash(p.chain, leaf)
            if row.chain_hash != expected_chain:
                if any(chain_hash(p.chain, later.leaf_hash) == later.chain_hash
                       for later in batch[i + 1:]):
                    return Finding(pos, Tamper.REORDERED,
                                   "a later entry belongs here: entries were reordered")
                return Finding(pos, Tamper.CHAIN_BROKEN, "chain hash does not follow its predecessor")
            finding = self._signer(p, pos, check, content, row.state)
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

    @staticmethod
    def _signer(p: _Pass, pos: int, check: EnvelopeCheck, content: EntryContent,
                state: bytes) -> Finding | None:
        try:
            record = p.registry.check_signer(check.key_id, content, pos)
        except UnknownKeyError as exc:
            return Finding(pos, Tamper.UNKNOWN_KEY, str(exc))
        except RevokedKeyError as exc:
            return Finding(pos, Tamper.REVOKED_KEY, str(exc))
        except QledgerError as exc:
            return Finding(pos, Tamper.UNAUTHORISED_KEY, str(exc))
        valid = check.signature_ok
        if check.verified_with != record.public.raw:
            # The worker used the key table, which is only a hint: the key that counts is
            # the one the entries themselves registered.  Rare, so checked here inline.
            valid = dsse.parse(state).signature_valid(record.public)
        if not valid:
            return Finding(pos, Tamper.BAD_SIGNATURE,
                           f"signature does not verify with key {check.key_id[:16]}…")
        try:
            p.registry.apply(pos, content)
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
                   if r.purpose == "checkpoint" and r.registered_at <= pos
                   and (r.revoked_at is None or r.revoked_at > pos)]
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

