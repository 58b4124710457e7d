"""Reading and checking a signed Submitted command: every refusal names its field, no server."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from qledger.ledger import dsse
from qledger.ledger.content import EntryContent
from qledger.ledger.errors import InvalidRequestError
from qledger.ledger.keys import SigningKey
from qledger.runs.commands import submit_command
from qledger.runs.reference_workflows import BELL
from qledger.runs.run import run_id_for
from qledger.runs.submission import (
    MAX_CLOCK_SKEW_SECONDS,
    MAX_IDEMPOTENCY_KEY,
    check_submission,
    read_submission,
)
from qledger.runs.workflow import workflow_sha256

BACKENDS = frozenset({"aer_ideal", "aer_noisy"})
KEY = SigningKey.from_seed("alice", bytes(32))


def resigned(data: bytes, change: Any) -> bytes:
    """The command with its content changed by ``change`` and signed again by the same key."""
    content = EntryContent.from_bytes(dsse.parse(data).payload)
    fields = content.__dict__.copy()
    change(fields)
    return dsse.sign(EntryContent(**fields).to_bytes(), KEY).canonical


def test_a_well_formed_submission_is_accepted_whole() -> None:
    data = submit_command(KEY, "test-origin", BELL, "key-1")
    submission = check_submission(read_submission(data), BACKENDS)
    assert submission.run_id == run_id_for("alice", "key-1")
    assert submission.workflow == BELL and submission.workflow_sha256 == workflow_sha256(BELL)
    assert submission.principal == "alice" and submission.project == "default"
    assert submission.signed.envelope.signature_valid(KEY.public)


@pytest.mark.parametrize("data", [b"", b"not json", b'{"payload": "x"}'])
def test_unreadable_commands_name_the_envelope(data: bytes) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        read_submission(data)
    assert caught.value.field == "command.envelope"


def test_an_entry_of_another_type_is_not_a_submission() -> None:
    completed = "executor.run:Run.Completed"
    data = resigned(submit_command(KEY, "o", BELL, "k"), lambda f: f.update(event_type=completed))
    with pytest.raises(InvalidRequestError, match="stream version 1") as caught:
        read_submission(data)
    assert caught.value.field == "command.envelope"


@pytest.mark.parametrize(("change", "field"), [
    (lambda f: f["payload"].update(idempotency_key=""), "idempotency_key"),
    (lambda f: f["payload"].update(idempotency_key="k" * (MAX_IDEMPOTENCY_KEY + 1)), "idempotency_key"),
    (lambda f: f.update(stream_id=str(run_id_for("alice", "other"))), "command.envelope"),
    (lambda f: f["payload"]["workflow"]["execute"].update(shots=0), "workflow.execute.shots"),
    (lambda f: f["payload"]["workflow"]["execute"].update(backend="nowhere"), "workflow.execute.backend"),
    (lambda f: f["payload"].update(workflow_sha256="0" * 64), "workflow_sha256"),
    (lambda f: f["payload"].update(rerun_of="1b4e28ba-2fa1-11d2-883f-0016d3cca427"), "rerun_of"),
    # Every member is required, and none other is stored.
    (lambda f: f["payload"].pop("originator_topic"), "originator_topic"),
    (lambda f: f["payload"].update(originator_topic="executor.run:Other"), "originator_topic"),
    (lambda f: f["payload"].pop("nonce"), "nonce"),
    (lambda f: f["payload"].update(nonce=7), "nonce"),
    (lambda f: f["payload"].pop("rerun_of"), "rerun_of"),
    (lambda f: f["payload"].update(comment="keep me forever"), "comment"),
    (lambda f: f["payload"]["workflow"]["execute"].update(shotz=10), "workflow.execute.shotz"),
    # Text no store can keep, or no terminal should print.
    (lambda f: f["payload"]["workflow"].update(name="bell\x00"), "workflow.name"),
    (lambda f: f["payload"]["workflow"].update(name="bell\x1b[2J"), "workflow.name"),
    # The entry's time is the client's, and must be now.
    (lambda f: f.update(timestamp=(datetime.now(UTC) - timedelta(hours=1)).isoformat()),
     "command.envelope.timestamp"),
    (lambda f: f.update(timestamp=(datetime.now(UTC) + timedelta(minutes=10)).isoformat()),
     "command.envelope.timestamp"),
    (lambda f: f.update(timestamp="2026-12-02T12:00:00"), "command.envelope.timestamp"),
    (lambda f: f.update(timestamp="yesterday"), "command.envelope.timestamp"),
])
@pytest.mark.reliability
def test_each_bad_member_is_refused_by_name(change: Any, field: str) -> None:
    def edit(fields: dict[str, Any]) -> None:
        fields["payload"] = copy.deepcopy(fields["payload"])
        change(fields)
        if field != "workflow_sha256" and "workflow" in fields["payload"]:
            fields["payload"]["workflow_sha256"] = workflow_sha256(fields["payload"]["workflow"])
    data = resigned(submit_command(KEY, "o", BELL, "k"), edit)
    with pytest.raises(InvalidRequestError) as caught:
        check_submission(read_submission(data), BACKENDS)
    assert caught.value.field == field


@pytest.mark.reliability
def test_a_time_within_the_allowed_skew_is_accepted() -> None:
    data = resigned(submit_command(KEY, "o", BELL, "k"), lambda f: f.update(
        timestamp=(datetime.now(UTC) - timedelta(seconds=MAX_CLOCK_SKEW_SECONDS - 30)).isoformat()))
    assert check_submission(read_submission(data), BACKENDS).idempotency_key == "k"


@pytest.mark.reliability
def test_a_lone_surrogate_is_not_canonical_json() -> None:
    """No UTF-8 spells U+D800 alone; a command that escapes one is refused before its members."""
    content = EntryContent.from_bytes(dsse.parse(submit_command(KEY, "o", BELL, "k")).payload)
    raw = content.to_bytes().replace(b'"idempotency_key":"k"', b'"idempotency_key":"k\\ud800"')
    assert b"\\ud800" in raw
    with pytest.raises(InvalidRequestError) as caught:
        read_submission(dsse.sign(raw, KEY).canonical)
    assert caught.value.field == "command.envelope"


def test_a_command_larger_than_an_entry_is_refused_naming_its_sweep() -> None:
    from qledger.ledger.content import MAX_ENTRY_BYTES
    from qledger.runs.reference_workflows import load

    sweep = copy.deepcopy(load("sweep_qasm3"))
    sweep["execute"]["pubs"] = [{"parameter_values": [[0.123456789, 1.23456789]] * 40_000, "shots": 10}]
    data = submit_command(KEY, "test-origin", sweep, "big")
    assert len(data) > MAX_ENTRY_BYTES
    with pytest.raises(InvalidRequestError) as caught:
        check_submission(read_submission(data), BACKENDS)
    assert caught.value.field == "workflow.execute.pubs" and "40,000 bindings" in str(caught.value)
    sweep["execute"]["pubs"][0]["parameter_values"] = [[0.5, 1.5]] * 1_000  # what one run carries
    assert check_submission(read_submission(submit_command(KEY, "test-origin", sweep, "fits")),
                            BACKENDS).workflow == sweep
