"""qledger's ledger: signed, hash-chained, append-only events with RFC 9162 Merkle proofs.

Domain modules (no database): ``canonical``, ``keys``, ``dsse``, ``content``, ``merkle``,
``chain``, ``checkpoint``, ``registry``, ``verify``, ``bundle``.  Infrastructure: ``store``
(the eventsourcing recorders for SQLite and PostgreSQL, and the store reader), ``app`` (the
eventsourcing application), ``exportlog`` and ``export_bundle`` (what leaves the store),
``admin`` and ``cli`` (the ``qledger`` command), ``bench``.
"""
