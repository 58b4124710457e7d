"""``python -m qledger.ledger``: the ledger's commands alone (no executor loaded)."""

from qledger.ledger.cli import ledger_app

ledger_app()()
