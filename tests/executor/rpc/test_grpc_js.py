"""The services called by another gRPC implementation: grpc-js from npm, loading protos/ with
proto-loader at run time, over a real loopback socket.  Unary and streaming calls, bytes and
64-bit fields, and refusals in the rich error model (a BadRequest detail naming the field)
must all read there as our own client reads them."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from qledger.ledger import merkle
from qledger.ledger.checkpoint import parse_note
from qledger.runs.reference_workflows import BELL
from tests.conftest import ONLY_SQLITE, skip_or_fail
from tests.executor.conftest import STEPS, Service

HERE = Path(__file__).with_name("grpc_js")
PROTO = Path(__file__).resolve().parents[3] / "protos" / "qledger" / "v1" / "qledger.proto"


@pytest.fixture(scope="module")
def grpc_js() -> Path:
    """A directory with client.js and its pinned node_modules (npm ci, kept per lock file)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        skip_or_fail("needs Node.js and npm (for grpc-js from the npm registry)")
    lock = (HERE / "package-lock.json").read_bytes()
    home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "qledger-grpc-js"
    place = home / hashlib.sha256(lock + (HERE / "package.json").read_bytes()).hexdigest()[:16]
    if not (place / "node_modules").is_dir():
        incoming = place.with_name(place.name + ".incoming")
        shutil.rmtree(incoming, ignore_errors=True)
        incoming.mkdir(parents=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(HERE / name, incoming / name)
        subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--silent"], cwd=incoming, check=True,
                       timeout=300)
        shutil.rmtree(place, ignore_errors=True)
        incoming.rename(place)
    shutil.copyfile(HERE / "client.js", place / "client.js")
    return place


@ONLY_SQLITE  # the wire, not the store
def test_grpc_js_reads_every_kind_of_reply(service: Service, grpc_js: Path) -> None:
    run_id = service.submit(BELL).run.run_id
    ours = service.watch(run_id)
    done = subprocess.run(["node", str(grpc_js / "client.js"), service.running.address, run_id, str(PROTO)],
                          capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode()
    seen = json.loads(done.stdout)
    checkpoint = parse_note(seen["checkpoint"]["note"]).checkpoint
    size = seen["checkpoint"]["tree_size"]
    assert checkpoint.tree_size == size == service.app.tree_size()
    envelopes = {row.position: row.state or b"" for row in service.app.source().entries(1, size)}
    assert [p["leaf_index"] + 1 for p in seen["proofs"]] == list(range(1, size + 1))
    for proof in seen["proofs"]:
        leaf = bytes.fromhex(proof["leaf_hash"])
        assert leaf == merkle.leaf_hash(envelopes[proof["leaf_index"] + 1])
        assert bytes.fromhex(proof["root_hash"]) == checkpoint.root_hash and proof["tree_size"] == size
        path = [bytes.fromhex(h) for h in proof["path"]]
        assert merkle.verify_inclusion(proof["leaf_index"], size, leaf, path, checkpoint.root_hash)
    assert seen["run"] == {"status": "completed", "steps": STEPS}
    assert [(e["position"], e["event_type"], base64.b64decode(e["envelope"])) for e in seen["watched"]] == [
        (e.position, e.event_type, e.envelope) for e in ours]
    assert seen["refused"] == {"code": 3, "fields": ["run_id"]}  # INVALID_ARGUMENT
    assert seen["out_of_range"] == {"code": 11, "fields": ["positions"]}  # OUT_OF_RANGE
