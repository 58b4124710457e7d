"""The example submission transcript (ledger/examples/submission.json) shipped for people who
write a client in another language: it is what qledger's own client produces from the stated
inputs, byte for byte, and it can be recomputed from the stated rules with other libraries
(rfc8785, PyNaCl, securesystemslib, uuid) and nothing of qledger.

Regenerate after an intended format change: python3 -m tests.executor.runs.test_submission_transcript
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import nacl.signing
import rfc8785
from securesystemslib.dsse import Envelope

from qledger.api import qledger_pb2 as pb
from qledger.ledger import dsse, merkle
from qledger.ledger.keys import PublicKey, SigningKey
from qledger.runs.backends import BackendCatalog
from qledger.runs.commands import submit_command
from qledger.runs.reference_workflows import BELL
from qledger.runs.submission import check_submission, read_submission

TRANSCRIPT = Path(__file__).resolve().parents[3] / "ledger" / "examples" / "submission.json"
INPUTS = {
    "key_file": "alice\n" + "a1" * 32 + "\n",  # what $QLEDGER_HOME/alice.key holds: principal, hex seed
    "origin": "ledger.example.com/prod",
    "idempotency_key": "nightly-bell-2026-12-03",
    "nonce": "5f0e2b9c8d7a6b5c4d3e2f1a0b9c8d7e",
    "timestamp": "2026-12-03T09:30:00+00:00",
}


def transcript() -> dict[str, Any]:
    """The transcript as qledger's client makes it."""
    principal, seed = INPUTS["key_file"].split()
    key = SigningKey.from_seed(principal, bytes.fromhex(seed))
    envelope = submit_command(key, INPUTS["origin"], BELL, INPUTS["idempotency_key"], INPUTS["nonce"],
                              signed_at=datetime.fromisoformat(INPUTS["timestamp"]))
    parsed = dsse.parse(envelope)
    content = json.loads(parsed.payload)
    request = pb.SubmitWorkflowRequest(command=pb.SignedEnvelope(envelope=envelope))
    return {
        "about": "A SubmitWorkflow call of the bell workflow, every byte derived from `inputs`; "
                 "see ledger/FORMAT.md, 'Submitting a run'.",
        "inputs": {**INPUTS, "workflow": BELL},
        "public_key": key.public.raw.hex(),
        "key_id": key.key_id,
        "workflow_canonical": rfc8785.dumps(BELL).decode(),
        "workflow_sha256": content["payload"]["workflow_sha256"],
        "run_id": content["stream_id"],
        "entry_content": parsed.payload.decode(),
        "pae_base64": base64.b64encode(dsse.pae(parsed.payload_type, parsed.payload)).decode(),
        "signature_base64": base64.b64encode(parsed.signature).decode(),
        "envelope": envelope.decode(),
        "leaf_hash": merkle.leaf_hash(envelope).hex(),
        "grpc_method": "/qledger.v1.Executor/SubmitWorkflow",
        "grpc_request_base64": base64.b64encode(request.SerializeToString()).decode(),
    }


def shipped() -> dict[str, Any]:
    return dict(json.loads(TRANSCRIPT.read_text(encoding="utf-8")))


def test_the_shipped_transcript_is_what_the_client_produces() -> None:
    assert shipped() == transcript()


def test_the_transcript_is_accepted_as_a_submission() -> None:
    """The server's own checks, at the moment the command was signed."""
    t = shipped()
    signed = read_submission(t["envelope"].encode())
    assert signed.content.origin == t["inputs"]["origin"]
    assert signed.envelope.signature_valid(PublicKey(bytes.fromhex(t["public_key"])))
    submission = check_submission(signed, BackendCatalog().names(),
                                  now=datetime.fromisoformat(t["inputs"]["timestamp"]))
    assert str(submission.run_id) == t["run_id"] and submission.workflow == t["inputs"]["workflow"]


def test_the_transcript_follows_from_its_inputs_by_the_documented_rules_alone() -> None:
    """Recomputed with other libraries, as a client in another language would."""
    t = shipped()
    inputs = t["inputs"]
    principal, seed = inputs["key_file"].split()
    signer = nacl.signing.SigningKey(bytes.fromhex(seed))
    public = bytes(signer.verify_key)
    assert public.hex() == t["public_key"] and hashlib.sha256(public).hexdigest() == t["key_id"]
    workflow = rfc8785.dumps(inputs["workflow"])
    assert workflow.decode() == t["workflow_canonical"]
    assert hashlib.sha256(workflow).hexdigest() == t["workflow_sha256"]
    run_id = uuid.uuid5(uuid.NAMESPACE_URL, f"qledger:run:{principal}:{inputs['idempotency_key']}")
    assert str(run_id) == t["run_id"]
    content = rfc8785.dumps({
        "origin": inputs["origin"], "stream_id": str(run_id), "stream_version": 1,
        "event_type": "executor.run:Run.Submitted", "schema_version": 1, "timestamp": inputs["timestamp"],
        "principal": principal,
        "payload": {"originator_topic": "executor.run:Run", "idempotency_key": inputs["idempotency_key"],
                    "nonce": inputs["nonce"], "workflow": inputs["workflow"],
                    "workflow_sha256": t["workflow_sha256"], "rerun_of": None}})
    assert content.decode() == t["entry_content"]
    payload_type = "application/vnd.qledger.event+json"
    pae = b"DSSEv1 %d %s %d %s" % (len(payload_type), payload_type.encode(), len(content), content)
    assert base64.b64encode(pae).decode() == t["pae_base64"]
    assert bytes(Envelope(content, payload_type, {}).pae()) == pae  # securesystemslib agrees
    signature = signer.sign(pae).signature  # Ed25519 is deterministic: the same bytes every time
    assert base64.b64encode(signature).decode() == t["signature_base64"]
    envelope = rfc8785.dumps({"payload": base64.b64encode(content).decode(), "payloadType": payload_type,
                              "signatures": [{"keyid": t["key_id"],
                                              "sig": base64.b64encode(signature).decode()}]})
    assert envelope.decode() == t["envelope"]
    assert hashlib.sha256(b"\x00" + envelope).hexdigest() == t["leaf_hash"]
    # protobuf: SubmitWorkflowRequest{1: SignedEnvelope{1: bytes}}, lengths as varints.
    def varint(n: int) -> bytes:
        out = b""
        while True:
            out += bytes([(n & 0x7F) | (0x80 if n > 0x7F else 0)])
            n >>= 7
            if not n:
                return out
    inner = b"\x0a" + varint(len(envelope)) + envelope
    assert base64.b64encode(b"\x0a" + varint(len(inner)) + inner).decode() == t["grpc_request_base64"]


if __name__ == "__main__":
    TRANSCRIPT.write_text(json.dumps(transcript(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {TRANSCRIPT}")
