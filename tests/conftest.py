"""Shared fixtures: a real PostgreSQL server (never skipped under CI=true) and SQLite files.

Every store-facing test takes ``store_url``, parametrized over both stores, so each
recorder passes the same suite (the eventsourcing library's own testing pattern).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import psycopg
import pytest

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"


def _answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def _start_throwaway_cluster() -> tuple[str, Path, list[str]] | None:
    """Start a private cluster with pg_ctl when no server answers (e.g. a bare laptop)."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    pg_ctl = shutil.which("pg_ctl") or (str(candidates[-1]) if candidates else None)
    if pg_ctl is None:
        return None
    bindir = Path(pg_ctl).parent
    data = Path(tempfile.mkdtemp(prefix="qledger-pg-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run_as: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root; run the throwaway cluster as nobody
        shutil.chown(data, "nobody")
        run_as = ["runuser", "-u", "nobody", "--"]
    subprocess.run([*run_as, str(bindir / "initdb"), "-D", str(data), "-U", "postgres",
                    "--auth=trust"], check=True, capture_output=True)
    subprocess.run([*run_as, pg_ctl, "-D", str(data), "-o",
                    f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "-w", "start"],
                   check=True, capture_output=True)
    stop = [*run_as, pg_ctl, "-D", str(data), "stop", "-m", "fast"]
    return f"postgresql://postgres@127.0.0.1:{port}/postgres", data, stop


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    url = os.environ.get("QLEDGER_TEST_DATABASE_URL", DEFAULT_PG)
    if _answers(url):
        yield url
        return
    started = _start_throwaway_cluster()
    if started is None or not _answers(started[0]):
        message = f"no PostgreSQL answers at {url} and no throwaway cluster could be started"
        if os.environ.get("CI") == "true":
            pytest.fail(message)  # under CI a PostgreSQL test is never skipped
        pytest.skip(message)
    yield started[0]
    subprocess.run(started[2], check=False, capture_output=True)
    shutil.rmtree(started[1], ignore_errors=True)


@pytest.fixture
def pg_store_url(pg_server_url: str) -> Iterator[str]:
    """A fresh schema per test, dropped afterwards."""
    schema = f"qt_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if urlparse(pg_server_url).query else "?"
    yield f"{pg_server_url}{sep}schema={schema}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def sqlite_store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest) -> str:
    name = "sqlite_store_url" if request.param == "sqlite" else "pg_store_url"
    return str(request.getfixturevalue(name))


@pytest.fixture
def qledger_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("QLEDGER_HOME", str(home))
    monkeypatch.delenv("QLEDGER_STORE", raising=False)
    return home
