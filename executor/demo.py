"""``qledger demo``: the main job end to end on an embedded SQLite store.

Submit (signed by the client), execute on Qiskit Aer (each step signed by the executor),
checkpoint, verify the store, export the log and verify the export offline.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from executor.bell import run_bell
from executor.run import Run
from ledger.admin import CHECKPOINTER, add_key, init_store, open_admin_app
from ledger.exportlog import LogFileSource, write_log
from ledger.keys import KeyStore
from ledger.verify import verify

WORKFLOW: dict[str, Any] = {"name": "bell-sampling", "version": 1, "shots": 2048, "seed_transpiler": 11,
            "seed_simulator": 7}


def run_demo(workdir: Path | None, say: Callable[[str], None]) -> bool:
    root = Path(workdir or tempfile.mkdtemp(prefix="qledger-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    keys = KeyStore(root / "home")
    store = f"sqlite:///{root / 'demo.db'}"
    app = open_admin_app(store, keys)
    init_store(app, keys)
    client = add_key(app, keys, "demo-client", "client")
    executor = add_key(app, keys, "executor-1", "executor")
    app.add_signer(client)
    app.add_signer(executor)
    say(f"store {store}: genesis, root, checkpoint, client and executor keys registered")

    definition = json.dumps(WORKFLOW, sort_keys=True).encode()
    run = Run(principal="demo-client", workflow="bell-sampling",
              workflow_sha256=hashlib.sha256(definition).hexdigest(), inputs=WORKFLOW)
    app.save(run)
    say(f"submitted run {run.id} as demo-client")
    for step, record in run_bell(WORKFLOW["shots"], WORKFLOW["seed_transpiler"],
                                 WORKFLOW["seed_simulator"]):
        run.record_step(principal="executor-1", step=step, record=record)
        app.save(run)
        say(f"  {step}: recorded and signed by executor-1")
    run.complete(principal="executor-1", summary={"status": "completed"})
    app.save(run)
    note = app.checkpoint(keys.load(CHECKPOINTER))
    say(f"checkpoint at tree size {note.split(chr(10))[1]}")

    report = verify(app.source())
    say(f"verify store: {'OK' if report.ok else report.finding}, {report.entries_checked} entries")
    log = root / "ledger.jsonl"
    with log.open("w", encoding="utf-8") as fh:
        write_log(app.source(), fh)
    offline = verify(LogFileSource(log))
    say(f"verify exported log {log}: {'OK' if offline.ok else offline.finding}")
    say(f"root hash {offline.root_hash.hex()}")
    return report.ok and offline.ok and offline.root_hash == report.root_hash
