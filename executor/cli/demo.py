"""``qledger demo``: the main job end to end on an embedded SQLite store.

An in-process gRPC server on a free loopback port; the client signs a SubmitWorkflow
command for the Bell reference workflow, watches the run's entries stream in as the
executor runs it on Qiskit Aer, then the ledger is verified, exported and verified offline,
and the run's signed lineage bundle is exported and verified offline.
"""

from __future__ import annotations

import json
import shlex
import tempfile
from collections.abc import Callable
from pathlib import Path
from uuid import UUID

from qledger.api import qledger_pb2 as pb
from qledger.api import qledger_pb2_grpc as pb_grpc
from qledger.cli.calls import Target
from qledger.cli.remote import submit_and_watch
from qledger.governance.changes import grant_role
from qledger.governance.policy import ALL_PROJECTS
from qledger.ledger import merkle
from qledger.ledger.admin import (
    CHECKPOINTER,
    EXPORTER,
    ROOT,
    add_key,
    export_key,
    init_store,
    open_admin_app,
    unique_origin,
)
from qledger.ledger.exportlog import LogFileSource, write_log
from qledger.ledger.keys import KeyStore
from qledger.ledger.verify import verify
from qledger.provenance.bundle import verify_bundle
from qledger.provenance.bundle_export import export_bundle
from qledger.provenance.report import run_facts
from qledger.rpc.channel import client_channel
from qledger.rpc.server import start_server
from qledger.runs.reference_workflows import BELL
from qledger.runs.workflow import DEFAULT_PROJECT


def next_commands(root: Path, store: str, run_id: str) -> list[str]:
    """What to type after the demo: each command reads the demo's own store and keys."""
    flags = f"--store {shlex.quote(store)}"
    return [f"export QLEDGER_HOME={shlex.quote(str(root / 'home'))}",
            f"qledger verify {flags}",
            f"qledger runs list {flags}",
            f"qledger report {run_id} {flags}",
            f"qledger lineage {run_id} --format dot {flags}",
            f"qledger verify-bundle {shlex.quote(str(root / f'run-{run_id}.bundle.json'))} "
            f"--trusted-key <(qledger keys public exporter)"]


def run_demo(workdir: Path | None, say: Callable[[str], None]) -> bool:
    root = Path(workdir or tempfile.mkdtemp(prefix="qledger-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    keys = KeyStore(root / "home")
    store = f"sqlite:///{root / 'demo.db'}"
    app = open_admin_app(store, keys)
    init_store(app, keys, origin=unique_origin())  # its own log, as `qledger init` gives every ledger
    client = add_key(app, keys, "demo-client", "client")
    executor_key = add_key(app, keys, "executor-1", "executor")
    admin = keys.load(ROOT)
    grant_role(app, admin, "demo-client", "submitter", DEFAULT_PROJECT)
    grant_role(app, admin, "demo-client", "auditor", ALL_PROJECTS)
    say(f"store {store}: genesis, root, checkpoint, client and executor keys registered; demo-client "
        "may submit and audit")

    running = start_server(app, executor_key, keys.load(CHECKPOINTER))
    try:
        say(f"executor serving on {running.address}; demo-client submits {BELL['name']}, signed")
        # Every call is signed by demo-client's key: that, not a request field, is who calls.
        run = submit_and_watch(Target(running.address), client, BELL, None, True, lambda entry: say(
            f"  position {entry.position}: {entry.event_type.rsplit('.', 1)[-1]}"))
        say(f"run {run.run_id} {run.status}: steps {', '.join(run.steps)}")
        with client_channel(running.address, signer=client) as channel:
            ledger = pb_grpc.LedgerStub(channel)
            checkpoint = ledger.GetCheckpoint(pb.GetCheckpointRequest())
            last = ledger.GetEntry(pb.GetEntryRequest(position=checkpoint.tree_size))
            proof = ledger.GetInclusionProof(pb.GetInclusionProofRequest(
                position=last.position, tree_size=checkpoint.tree_size))
            included = merkle.verify_inclusion(proof.leaf_index, proof.tree_size, proof.leaf_hash,
                                               list(proof.path), checkpoint.root_hash)
            say(f"checkpoint at size {checkpoint.tree_size}; inclusion of the last entry: "
                f"{'proven' if included else 'FAILED'}")
    finally:
        running.stop()

    report = verify(app.source())
    say(f"verify store: {'OK' if report.ok else report.finding}, {report.entries_checked} entries")
    log = root / "ledger.jsonl"
    with log.open("w", encoding="utf-8") as fh:
        write_log(app.source(), fh)
    offline = verify(LogFileSource(log))
    say(f"verify exported log {log}: {'OK' if offline.ok else offline.finding}")
    say(f"root hash {offline.root_hash.hex()}")
    bundle_path = root / f"run-{run.run_id}.bundle.json"
    bundle_path.write_bytes(export_bundle(app, UUID(run.run_id), export_key(app, keys),
                                          keys.load(CHECKPOINTER)))
    pinned = keys.load(EXPORTER).public
    bundle = verify_bundle(bundle_path.read_bytes(), trusted_export_key=pinned)
    say(f"lineage bundle {bundle_path}: VALID offline ({bundle.entries} entries proven against the "
        f"checkpoint of size {bundle.tree_size}, {len(bundle.subjects)} subjects)")
    execution = run_facts([r.state or b"" for r in app.source().stream_entries(UUID(run.run_id), 0)])[
        "records"].get("execution", {})
    say(f"counts ({execution.get('shots')} shots on {execution.get('backend', {}).get('name')}): "
        f"{json.dumps(execution.get('counts'), sort_keys=True)}")
    say(f"the ledger and its keys stay in {root}; explore them with:")
    for line in next_commands(root, store, run.run_id):
        say(f"  {line}")
    return (run.status == "completed" and included and report.ok and offline.ok
            and offline.root_hash == report.root_hash)
