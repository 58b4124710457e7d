"""An executor server in its own process, for crash and scale-out tests.

``python -m tests.executor.runs.server_process STORE HOME LATENCY`` serves on a free loopback
port, prints ``port N worker NAME``, and offers a backend ``slow`` (aer_ideal plus LATENCY
seconds per call).
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from qledger.ledger.admin import CHECKPOINTER
from qledger.ledger.app import LedgerApp
from qledger.ledger.keys import KeyStore
from qledger.rpc.server import ExecutorSettings, start_server
from qledger.runs.backends import BackendCatalog, FaultConfig


def main() -> None:
    store, home, latency = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])
    keys = KeyStore(home)
    app = LedgerApp(store, create_tables=False)
    catalog = BackendCatalog({"slow": ("aer_ideal", FaultConfig(latency_seconds=latency))})
    running = start_server(app, keys.load("executor-1"), keys.load(CHECKPOINTER),
                           # Crash and scale-out are tested here; authorisation in test_authz.
                           # A lease short enough for quick takeovers, long enough that a busy
                           # machine (the suite runs in parallel) does not lose it while working.
                           settings=ExecutorSettings(workers=2, lease_seconds=4.0, poll_seconds=0.1,
                                                     authorize=False),
                           catalog=catalog)
    print(f"port {running.port} worker {running.worker.name}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
