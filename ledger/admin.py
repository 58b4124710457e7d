"""Admin operations the CLI exposes: set up a store and manage its keys."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, cast

from psycopg.sql import SQL, Identifier

from qledger.ledger.app import DEFAULT_ORIGIN, LedgerApp
from qledger.ledger.keys import KeyStore, SigningKey
from qledger.ledger.projection import ProjectionRunner
from qledger.ledger.store.artifacts import HotArtifacts
from qledger.ledger.store.ledger_tables import ARTIFACTS
from qledger.ledger.store.postgres import LedgerPostgresRecorder, grant_statements
from qledger.ledger.store.url import StoreURL

ROOT = "root"
CHECKPOINTER = "checkpointer"
EXPORTER = "exporter"
SERVICE_ROLE = "qledger_service"


@dataclass
class InitResult:
    created_genesis: bool
    registered: list[str]
    origin: str


def unique_origin() -> str:
    """An origin line no other ledger has (C2SP: a schema-less URL naming the log), for a
    ledger whose owner chose none: checkpoints of two ledgers must never be confusable."""
    return f"qledger.local/{secrets.token_hex(8)}"


def origin_problem(origin: str) -> str | None:
    """Why ``origin`` cannot be a checkpoint's first line (C2SP tlog-checkpoint); None if it can."""
    if not origin or len(origin) > 255:
        return "an origin is 1 to 255 characters"
    if any(c.isspace() or not c.isprintable() for c in origin):
        return "an origin has no spaces or control characters (e.g. ledger.example.com/prod)"
    return None


def init_store(app: LedgerApp, keys: KeyStore, origin: str = DEFAULT_ORIGIN,
               service_role: str = SERVICE_ROLE, projections: ProjectionRunner | None = None) -> InitResult:
    """Tables, triggers, grants, genesis, root and checkpoint keys.  Safe to run twice.

    Projection tables are read models, not ledger tables: the service role may change them
    (following the log and rebuilding), so they get ordinary DML grants.
    """
    if app.store.is_postgres:
        recorder = cast(LedgerPostgresRecorder, app.recorder)
        schema = recorder.datastore.schema
        with recorder.datastore.transaction(commit=True) as cursor:
            cursor.execute(SQL("CREATE SCHEMA IF NOT EXISTS {}").format(Identifier(schema)))
        recorder.create_table()
        with recorder.datastore.transaction(commit=True) as cursor:
            for statement in grant_statements(schema, service_role, recorder.ledger_table_names()):
                cursor.execute(statement)
        HotArtifacts(app.ledger).create_table()
        with recorder.datastore.transaction(commit=True) as cursor:
            for statement in grant_statements(schema, service_role, [ARTIFACTS]):
                cursor.execute(statement)
        if projections is not None:
            projections.create_tables()
            with recorder.datastore.transaction(commit=True) as cursor:
                for statement in grant_statements(schema, service_role, projections.table_names(),
                                                  "SELECT, INSERT, UPDATE, DELETE"):
                    cursor.execute(statement)
    else:
        app.recorder.create_table()  # type: ignore[attr-defined]
        HotArtifacts(app.ledger).create_table()
        if projections is not None:
            projections.create_tables()
    app.reload_origin()
    root = keys.load_or_create(ROOT)
    created = app.genesis(root, origin)
    app.add_signer(root)
    registered = []
    checkpointer = keys.load_or_create(CHECKPOINTER)
    if checkpointer.key_id not in app.keyring().keys:
        app.register_key(ROOT, CHECKPOINTER, checkpointer.public, "checkpoint")
        registered.append(CHECKPOINTER)
    return InitResult(created, registered, app.require_origin())


def open_admin_app(store: StoreURL | str | None, keys: KeyStore, *, create_tables: bool = False) -> LedgerApp:
    """An app holding whatever admin and checkpoint keys this machine has."""
    signers = [keys.load(p) for p in (ROOT, CHECKPOINTER) if keys.exists(p)]
    return LedgerApp(store, signers, create_tables=create_tables)


def add_key(app: LedgerApp, keys: KeyStore, principal: str, purpose: str,
            admin: str = ROOT) -> SigningKey:
    key = keys.load_or_create(principal)
    app.register_key(admin, principal, key.public, purpose)
    return key


def key_listing(app: LedgerApp) -> list[dict[str, Any]]:
    return [{"key_id": k.key_id, "principal": k.principal, "purpose": k.purpose,
             "registered_at": k.registered_at, "revoked_at": k.revoked_at}
            for k in app.source().key_rows()]


def export_key(app: LedgerApp, keys: KeyStore) -> SigningKey:
    """The ledger's export key, created and registered (signed by root) on first use."""
    key = keys.load_or_create(EXPORTER)
    if key.key_id not in app.keyring().keys:
        app.register_key(ROOT, EXPORTER, key.public, "export")
    return key
