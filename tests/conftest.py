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
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn
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


@dataclass
class Cluster:
    """A private PostgreSQL cluster this test run started (and may stop and start again)."""

    url: str
    data: Path
    run_as: list[str]
    pg_ctl: str
    port: int

    def start(self) -> None:
        # The server's output goes to its log file: a server holding our pipe would keep
        # pg_ctl's caller waiting for end of file for ever.
        subprocess.run([*self.run_as, self.pg_ctl, "-D", str(self.data), "-l", str(self.data / "log"),
                        "-o", f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1", "-w", "start"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self, mode: str = "fast") -> None:
        """``immediate`` is a crash: no checkpoint, every connection cut."""
        subprocess.run([*self.run_as, self.pg_ctl, "-D", str(self.data), "stop", "-m", mode],
                       check=False, capture_output=True)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.data, ignore_errors=True)


def start_private_cluster() -> Cluster | None:
    """Start a private cluster with pg_ctl (None where PostgreSQL is not installed)."""
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
    if os.geteuid() == 0:  # initdb refuses root; run the private cluster as nobody
        shutil.chown(data, "nobody")
        run_as = ["runuser", "-u", "nobody", "--"]
    subprocess.run([*run_as, str(bindir / "initdb"), "-D", str(data), "-U", "postgres",
                    "--auth=trust"], check=True, capture_output=True)
    cluster = Cluster(f"postgresql://postgres@127.0.0.1:{port}/postgres", data, run_as, pg_ctl, port)
    cluster.start()
    return cluster


def skip_or_fail(message: str) -> NoReturn:
    """Under CI=true a test of real infrastructure (PostgreSQL, a container, another
    implementation, a browser) fails rather than skips."""
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def _require(cluster: Cluster | None, url: str) -> Cluster:
    if cluster is None or not _answers(cluster.url):
        skip_or_fail(f"no PostgreSQL answers at {url} and no private cluster could be started")
    return cluster


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    url = os.environ.get("QLEDGER_TEST_DATABASE_URL", DEFAULT_PG)
    if _answers(url):
        yield url
        return
    cluster = _require(start_private_cluster(), url)
    yield cluster.url
    cluster.remove()


@pytest.fixture
def restartable_pg() -> Iterator[Cluster]:
    """A PostgreSQL server of this test's own, which it may crash and restart at will."""
    cluster = _require(start_private_cluster(), "a private cluster")
    yield cluster
    cluster.remove()


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


# For tests whose subject does not depend on the store (a child process, a client, a format):
# one store instead of both, for the suite's time budget.
ONLY_SQLITE = pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
ONLY_POSTGRES = pytest.mark.parametrize("store_url", ["postgres"], indirect=True)


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
