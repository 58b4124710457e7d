"""Names and DDL of the ledger's own tables, beside the library's events table."""

from __future__ import annotations

ENTRIES = "ledger_entries"
KEYS = "ledger_keys"
CHECKPOINTS = "ledger_checkpoints"
LEDGER_TABLES = (ENTRIES, KEYS, CHECKPOINTS)
# Not a ledger table: artifacts are checked by digest, and archiving deletes their hot copies.
ARTIFACTS = "ledger_artifacts"
ARTIFACTS_DDL = ("CREATE TABLE IF NOT EXISTS {artifacts} (sha256 TEXT PRIMARY KEY, media_type TEXT NOT NULL, "
                 "size {int} NOT NULL, data {blob} NOT NULL)")

# Column types use {blob} and {int} so one text serves both dialects.
TABLE_DDL = (
    "CREATE TABLE IF NOT EXISTS {entries} ("
    " position {int} PRIMARY KEY,"
    " notification_id {int} NOT NULL UNIQUE,"
    " leaf_hash {blob} NOT NULL,"
    " chain_hash {blob} NOT NULL,"
    " subtree_hashes {blob} NOT NULL)",
    "CREATE TABLE IF NOT EXISTS {keys} ("
    " position {int} NOT NULL,"
    " key_id TEXT NOT NULL,"
    " action TEXT NOT NULL CHECK (action IN ('register', 'revoke')),"
    " principal TEXT NOT NULL,"
    " public_key {blob} NOT NULL,"
    " purpose TEXT NOT NULL,"
    " PRIMARY KEY (key_id, action))",
    "CREATE TABLE IF NOT EXISTS {checkpoints} ("
    " tree_size {int} PRIMARY KEY,"
    " note TEXT NOT NULL)",
)
