"""qledger's ledger (installed as ``qledger.ledger``): signed, hash-chained, append-only events
with RFC 9162 Merkle proofs and C2SP checkpoints.  It imports nothing from the executor.

Pure modules (no database): ``canonical``, ``keys``, ``dsse``, ``content``, ``merkle``, ``chain``,
``checkpoint``, ``keyring``, ``registry``, ``artifacts``, ``verify``.  Infrastructure: ``store``
(the eventsourcing recorders for SQLite and PostgreSQL, the store reader, the hot artifact table),
``app`` (the eventsourcing application), ``exportlog``, ``admin``, and ``cli`` (the ledger's
commands).
"""
