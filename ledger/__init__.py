"""qledger's ledger: signed, hash-chained, append-only events with RFC 9162 Merkle proofs.

Domain modules (no database): ``canonical``, ``keys``, ``dsse``, ``content``, ``merkle``,
``chain``, ``checkpoint``, ``registry``, ``verify``.  Infrastructure: ``store`` (the
eventsourcing recorders for SQLite and PostgreSQL), ``app`` (the eventsourcing application),
``cli`` (the ``qledger`` command).
"""
