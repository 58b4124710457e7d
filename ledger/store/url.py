"""``--store URL`` to the eventsourcing environment that selects and configures a recorder."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from qledger.ledger.errors import StoreUnavailableError

DEFAULT_STORE = "sqlite:///./qledger.db"


@dataclass(frozen=True)
class StoreURL:
    url: str
    kind: str  # "sqlite" or "postgresql"
    env: dict[str, str]

    @property
    def is_postgres(self) -> bool:
        return self.kind == "postgresql"


def resolve_store(url: str | None) -> StoreURL:
    """The explicit URL, else ``$QLEDGER_STORE``, else the embedded SQLite default."""
    return parse_store_url(url or os.environ.get("QLEDGER_STORE") or DEFAULT_STORE)


def parse_store_url(url: str) -> StoreURL:
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        # SQLAlchemy's convention: sqlite:///relative/path, sqlite:////absolute/path.
        if not url.startswith("sqlite:///") or len(url) == len("sqlite:///"):
            raise StoreUnavailableError(f"bad SQLite URL {url!r}: expected sqlite:///PATH")
        path = url[len("sqlite:///"):]
        if path != ":memory:" and not path.startswith("file:"):
            parent = Path(path).parent
            if not parent.is_dir():
                raise StoreUnavailableError(f"directory {parent} of SQLite store does not exist")
        return StoreURL(url, "sqlite", {
            "PERSISTENCE_MODULE": "qledger.ledger.store.sqlite:LedgerSQLiteFactory",
            "SQLITE_DBNAME": path,
            "SQLITE_LOCK_TIMEOUT": "30",
            "APPLICATION_RECORDER_TOPIC": "qledger.ledger.store.sqlite:LedgerSQLiteRecorder",
        })
    if parsed.scheme in ("postgresql", "postgres"):
        query = parse_qs(parsed.query)
        dbname = unquote(parsed.path.lstrip("/"))
        if not dbname or not parsed.hostname:
            raise StoreUnavailableError(
                f"bad PostgreSQL URL {url!r}: expected postgresql://USER@HOST:PORT/DBNAME")
        return StoreURL(url, "postgresql", {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": dbname,
            "POSTGRES_HOST": parsed.hostname,
            "POSTGRES_PORT": str(parsed.port or 5432),
            "POSTGRES_USER": unquote(parsed.username or os.environ.get("USER", "postgres")),
            "POSTGRES_PASSWORD": unquote(parsed.password or ""),
            "POSTGRES_SCHEMA": query.get("schema", ["public"])[0],
            "POSTGRES_CONNECT_TIMEOUT": query.get("connect_timeout", ["5"])[0],
            "POSTGRES_POOL_SIZE": query.get("pool_size", ["2"])[0],
            "POSTGRES_MAX_OVERFLOW": "8",
            "POSTGRES_LOCK_TIMEOUT": "30",
            # A pooled connection is checked as it is taken (an empty query, about 50 us on
            # loopback): after a database restart every idle one is dead, and without the
            # check each failed the first read it was given.
            "POSTGRES_PRE_PING": "y",
            "APPLICATION_RECORDER_TOPIC": "qledger.ledger.store.postgres:LedgerPostgresRecorder",
        })
    raise StoreUnavailableError(
        f"unsupported store URL {url!r}: use sqlite:///PATH or postgresql://USER@HOST/DB")
