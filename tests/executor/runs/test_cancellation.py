"""The CancelRun command and who may give it: plain rules, no server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from qledger.ledger import dsse
from qledger.ledger.canonical import canonical_bytes
from qledger.ledger.errors import InvalidRequestError
from qledger.ledger.keys import SigningKey
from qledger.runs.cancellation import MAX_COMMAND_AGE, may_cancel, read_cancel
from qledger.runs.commands import COMMAND_PAYLOAD_TYPE, cancel_command

KEY = SigningKey.from_seed("alice", bytes(32))
RUN = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"


def signed(body: dict[str, object]) -> bytes:
    return dsse.sign(canonical_bytes(body), KEY, COMMAND_PAYLOAD_TYPE).canonical


def test_a_fresh_command_for_this_ledger_is_read() -> None:
    command = read_cancel(cancel_command(KEY, "origin-a", RUN, "wrong data"), "origin-a")
    assert (command.run_id, command.principal, command.reason) == (RUN, "alice", "wrong data")
    assert command.envelope.signature_valid(KEY.public)


def test_a_command_for_another_ledger_is_refused() -> None:
    with pytest.raises(InvalidRequestError, match="for this ledger") as caught:
        read_cancel(cancel_command(KEY, "origin-a", RUN, "r"), "origin-b")
    assert caught.value.field == "command.envelope"


LATE = MAX_COMMAND_AGE + timedelta(seconds=5)


@pytest.mark.parametrize(("issued", "message"), [
    ("yesterday", "ISO 8601"),
    ("2026-01-01T00:00:00", "time zone"),
    (-LATE, "too old"),
    (LATE, "from the future"),
])
def test_the_issue_time_must_be_recent_and_zoned(issued: str | timedelta, message: str) -> None:
    if isinstance(issued, timedelta):  # relative to when the test runs, not when it was collected
        issued = (datetime.now(UTC) + issued).isoformat()
    body = {"command": "CancelRun", "origin": "o", "run_id": RUN, "reason": "r", "principal": "alice",
            "nonce": "n", "issued_at": issued}
    with pytest.raises(InvalidRequestError, match=message) as caught:
        read_cancel(signed(body), "o")
    assert caught.value.field == "issued_at"


def test_who_may_cancel() -> None:
    command = read_cancel(cancel_command(KEY, "o", RUN, "r"), "o")
    assert may_cancel("alice", command, submitted_by="alice", admin_of_project=False)
    assert not may_cancel("alice", command, submitted_by="bob", admin_of_project=False)
    assert may_cancel("alice", command, submitted_by="bob", admin_of_project=True)
    # The body must name its signer: bob cannot replay alice's command as his own.
    assert not may_cancel("bob", command, submitted_by="bob", admin_of_project=True)
