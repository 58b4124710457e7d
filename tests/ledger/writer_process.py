"""A writer process for the concurrency tests: ``python -m tests.ledger.writer_process URL HOME N BATCH``."""

from __future__ import annotations

import sys
from pathlib import Path

from qledger.ledger.app import LedgerApp
from qledger.ledger.keys import KeyStore
from tests.ledger.helpers import write_notes


def main() -> None:
    url, home, count, batch = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    app = LedgerApp(url, [KeyStore(home).load("alice")], create_tables=False)
    print("ready", flush=True)
    write_notes(app, "alice", count, per_save=batch)


if __name__ == "__main__":
    main()
