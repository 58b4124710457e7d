"""Client side: build the signed command that becomes a run's first ledger entry."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from qledger.ledger import dsse
from qledger.ledger.canonical import canonical_bytes
from qledger.ledger.content import SCHEMA_VERSION, EntryContent
from qledger.ledger.keys import SigningKey
from qledger.runs.run import RUN_SUBMITTED_TYPE, RUN_TOPIC, run_id_for
from qledger.runs.workflow import workflow_sha256


def submit_command(key: SigningKey, origin: str, workflow: dict[str, Any], idempotency_key: str,
                   nonce: str | None = None, rerun_of: str | None = None,
                   signed_at: datetime | None = None) -> bytes:
    """The canonical DSSE envelope of the run's Submitted entry, signed by the client (at
    ``signed_at``, by default now: the server refuses a time far from its clock).

    The client signs the very entry that will be stored, stream id and version included,
    so the server cannot alter a command without breaking its signature.
    """
    content = EntryContent(
        origin=origin,
        stream_id=str(run_id_for(key.principal, idempotency_key)),
        stream_version=1,
        event_type=RUN_SUBMITTED_TYPE,
        schema_version=SCHEMA_VERSION,
        timestamp=(signed_at or datetime.now(UTC)).isoformat(),
        principal=key.principal,
        payload={"originator_topic": RUN_TOPIC, "idempotency_key": idempotency_key,
                 "nonce": nonce or secrets.token_hex(16), "workflow": workflow,
                 "workflow_sha256": workflow_sha256(workflow), "rerun_of": rerun_of},
    )
    return dsse.sign(content.to_bytes(), key).canonical


COMMAND_PAYLOAD_TYPE = "application/vnd.qledger.command+json"


def cancel_command(key: SigningKey, origin: str, run_id: str, reason: str, nonce: str | None = None) -> bytes:
    """A signed request to cancel a run; the executor records it inside the Cancelled entry."""
    body = {"command": "CancelRun", "origin": origin, "run_id": run_id, "reason": reason,
            "principal": key.principal, "nonce": nonce or secrets.token_hex(16),
            "issued_at": datetime.now(UTC).isoformat()}
    return dsse.sign(canonical_bytes(body), key, COMMAND_PAYLOAD_TYPE).canonical
