"""``qledger bench ledger``: every figure next to a baseline measured in the same run."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from itertools import accumulate
from pathlib import Path
from typing import Any, cast

import psycopg
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event

from qledger.ledger import merkle
from qledger.ledger.admin import add_key, init_store, open_admin_app
from qledger.ledger.app import LedgerApp
from qledger.ledger.chain import GENESIS_CHAIN_HASH, chain_hash
from qledger.ledger.group_commit import GroupCommitter
from qledger.ledger.keys import KeyStore, SigningKey
from qledger.ledger.store.url import parse_store_url, resolve_store
from qledger.ledger.verify import verify


class BenchRecord(Aggregate):
    """One event per aggregate, the payload of a typical execution step record."""

    @event("Recorded")
    def __init__(self, *, principal: str, step: str, settings: dict[str, Any]) -> None:
        self.step = step
        self.settings = settings


def _payload(i: int) -> dict[str, Any]:
    return {"step": "execute", "settings": {"shots": 1024, "seed_simulator": i,
                                            "backend": "aer_simulator", "counts_sha256": "ab" * 32}}


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


@contextmanager
def _bench_store(base: str | None) -> Iterator[str]:
    """A fresh store of the requested kind, removed afterwards."""
    store = resolve_store(base)
    if store.is_postgres:
        schema = f"qledger_bench_{uuid.uuid4().hex[:8]}"
        server = store.url.split("?")[0]
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        try:
            yield f"{server}?schema={schema}&pool_size=4"
        finally:
            with psycopg.connect(server, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    else:
        directory = tempfile.mkdtemp(prefix="qledger-bench-")
        try:
            yield f"sqlite:///{directory}/ledger.db"
        finally:
            shutil.rmtree(directory, ignore_errors=True)


class PlainApp(Application[Any]):
    name = "plain"


def _plain_app(url: str) -> PlainApp:
    store = parse_store_url(url)
    env = dict(store.env)
    env.pop("APPLICATION_RECORDER_TOPIC")
    if not store.is_postgres:
        env["SQLITE_DBNAME"] = env["SQLITE_DBNAME"] + ".plain"
    return PlainApp(env)


def _save_rates(plain: Application[Any], ledger: LedgerApp, n: int, rounds: int = 5) -> tuple[float, float]:
    """(a) and (b), measured in alternating rounds so drift in the database (checkpoints,
    autovacuum, cache) falls on both alike."""
    spent = {"plain": 0.0, "ledger": 0.0}
    per_round = max(1, n // rounds)
    for r in range(rounds):
        for name, app in (("plain", plain), ("ledger", ledger)):
            start = time.perf_counter()
            for i in range(r * per_round, (r + 1) * per_round):
                app.save(BenchRecord(principal="alice", **_payload(i)))
            spent[name] += time.perf_counter() - start
    total = per_round * rounds
    return _rate(total, spent["plain"]), _rate(total, spent["ledger"])


IN_FLIGHT = 64  # saves one writer of (c) has outstanding at most


def _even_shares(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` counts that differ by one at most and add up to it."""
    return [total // parts + (i < total % parts) for i in range(parts)]


def _group_commit_writers(url: str, home: str, count: int, writers: int, ready: Any, out: Any) -> None:
    """One process of (c): ``writers`` threads saving through one group committer."""
    keys = KeyStore(Path(home))
    app = LedgerApp(url, [keys.load("alice")], create_tables=False)
    app.save(BenchRecord(principal="alice", **_payload(0)))  # connections and caches warm
    committer = GroupCommitter(app)
    shares = _even_shares(count, writers)  # every one of ``count`` events is written
    firsts = [0, *accumulate(shares)]

    def writer(w: int) -> None:
        # Up to IN_FLIGHT saves outstanding per writer, as a client waiting for its acks would.
        pending: deque[Future[None]] = deque()
        for i in range(shares[w]):
            if len(pending) >= IN_FLIGHT:
                pending.popleft().result()
            pending.append(committer.submit(BenchRecord(principal="alice", **_payload(firsts[w] + i))))
        for f in pending:
            f.result()

    ready.wait()
    start = time.monotonic()
    with ThreadPoolExecutor(writers) as pool:
        list(pool.map(writer, range(writers)))
    out.put((start, time.monotonic(), count))
    committer.close()


def _group_commit_rate(url: str, home: str, events: int, writers: int, processes: int) -> float:
    """(c): ``writers`` concurrent writers spread over ``processes`` processes (as over
    replicas: one interpreter cannot sign and map on more than one core), each process
    batching its writers' saves into group commits; wall time from the common start."""
    context = multiprocessing.get_context("spawn")
    ready, out = context.Barrier(processes), context.Queue()
    # Spread writers and events evenly, so all ``writers`` run whatever the core count.
    children = [context.Process(target=_group_commit_writers,
                                args=(url, home, count, threads, ready, out))
                for threads, count in zip(_even_shares(writers, processes),
                                          _even_shares(events, processes), strict=True)]
    for child in children:
        child.start()
    results = [out.get(timeout=600) for _ in children]
    for child in children:
        child.join()
        if child.exitcode != 0:
            raise RuntimeError(f"a group-commit writer process exited with {child.exitcode}")
    return _rate(sum(n for _, _, n in results),
                 max(end for _, end, _ in results) - min(start for start, _, _ in results))


def _raw_insert_rate(url: str, n: int, row_bytes: int) -> float:
    """The ceiling: batched INSERTs of rows the size of an entry, no Python per row beyond params."""
    store = parse_store_url(url)
    rows = [(uuid.uuid4().hex, 1, "topic", os.urandom(row_bytes)) for _ in range(n)]
    if store.is_postgres:
        schema = store.env["POSTGRES_SCHEMA"]
        with psycopg.connect(url.split("?")[0]) as conn:
            conn.execute(f'CREATE TABLE "{schema}".raw_rows (id text, v int, topic text, state bytea)')
            conn.commit()
            start = time.perf_counter()
            with conn.cursor() as cur:
                for i in range(0, n, 500):
                    cur.executemany(f'INSERT INTO "{schema}".raw_rows VALUES (%s,%s,%s,%s)',
                                    rows[i:i + 500])
                    conn.commit()
            return _rate(n, time.perf_counter() - start)
    import sqlite3

    lite = sqlite3.connect(store.env["SQLITE_DBNAME"] + ".raw")
    lite.execute("PRAGMA journal_mode=WAL")
    lite.execute("CREATE TABLE raw_rows (id text, v int, topic text, state blob)")
    start = time.perf_counter()
    for i in range(0, n, 500):
        lite.executemany("INSERT INTO raw_rows VALUES (?,?,?,?)", rows[i:i + 500])
        lite.commit()
    lite.close()
    return _rate(n, time.perf_counter() - start)


def _signing_cpu_per_event(app: LedgerApp, n: int) -> float:
    """Seconds of CPU per event for the work no store can take away: creating the aggregate,
    collecting its event, mapping and signing it (no database, no chain)."""
    start = time.process_time()
    for i in range(n):
        for domain_event in BenchRecord(principal="alice", **_payload(i)).collect_events():
            app.mapper.to_stored_event(domain_event)
    return (time.process_time() - start) / n


def _ed25519_verify_rate(seconds: float = 1.0) -> float:
    key = SigningKey.generate("bench")
    message = b"x" * 400
    signature = key.sign(message)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(200):
            key.public.verify(signature, message)
        count += 200
    return _rate(count, time.perf_counter() - start)


def _synthetic_tree(url: str, size: int) -> Callable[[int, int], list[bytes]]:
    """Write ``size`` leaf rows straight into a scratch entries table; return a prover."""
    store = parse_store_url(url)
    frontier = merkle.Frontier()
    previous = GENESIS_CHAIN_HASH

    def rows() -> Iterator[tuple[int, int, bytes, bytes, bytes]]:
        nonlocal previous
        for position in range(1, size + 1):
            leaf = merkle.leaf_hash(position.to_bytes(8, "big"))
            previous = chain_hash(previous, leaf)
            yield position, position, leaf, previous, b"".join(frontier.append(leaf))

    table = f"proof_tree_{size}"
    if store.is_postgres:
        schema = store.env["POSTGRES_SCHEMA"]
        conn: Any = psycopg.connect(url.split("?")[0], autocommit=True)
        name = f'"{schema}".{table}'
        conn.execute(f"CREATE TABLE {name} (position bigint PRIMARY KEY, notification_id bigint, "
                     "leaf_hash bytea, chain_hash bytea, subtree_hashes bytea)")
        with conn.cursor() as cur, cur.copy(f"COPY {name} FROM STDIN") as copy:
            for row in rows():
                copy.write_row(row)
        mark = "%s"
    else:
        import sqlite3

        conn = cast(Any, sqlite3.connect(store.env["SQLITE_DBNAME"] + f".{table}"))
        name = table
        conn.execute(f"CREATE TABLE {name} (position INTEGER PRIMARY KEY, notification_id INTEGER, "
                     "leaf_hash BLOB, chain_hash BLOB, subtree_hashes BLOB)")
        conn.executemany(f"INSERT INTO {name} VALUES (?,?,?,?,?)", rows())
        conn.commit()
        mark = "?"

    def fetch(addresses: Any) -> dict[merkle.NodeAddress, bytes]:
        wanted = list(addresses)
        positions = sorted({merkle.storing_position(lv, ix) for lv, ix in wanted})
        marks = ",".join(mark for _ in positions)
        got = {int(r[0]): (bytes(r[1]), bytes(r[2])) for r in conn.execute(
            f"SELECT position, leaf_hash, subtree_hashes FROM {name} WHERE position IN ({marks})",
            positions).fetchall()}
        return {(lv, ix): merkle.node_from_row(lv, *got[merkle.storing_position(lv, ix)])
                for lv, ix in wanted}

    return lambda index, n: merkle.inclusion_proof(index, n, fetch)


def _verify_rss_kib(url: str, home: str) -> int:
    """Peak RSS of a separate `qledger verify` process (KiB on Linux).

    wait4 reports that one process: RUSAGE_CHILDREN would report the largest child this
    benchmark ever waited for, such as a writer process of (c)."""
    # Its stderr goes to a file, not a pipe: nothing reads a pipe while wait4 waits.
    with tempfile.TemporaryFile() as errors:
        child = subprocess.Popen([sys.executable, "-m", "qledger.ledger", "verify", "--store", url],
                                 stdout=subprocess.DEVNULL, stderr=errors,
                                 env={**os.environ, "QLEDGER_HOME": home})
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode != 0:
            errors.seek(0)
            raise RuntimeError(f"qledger verify exited {child.returncode}: {errors.read().decode()}")
    return usage.ru_maxrss


def _verify_rate(app: LedgerApp, jobs: int) -> tuple[int, float]:
    """(e): the ledger's size and verify's entries/s over all of it with ``jobs`` workers."""
    size = app.tree_size()
    start = time.perf_counter()
    report = verify(app.source(), jobs=jobs)
    rate = _rate(size, time.perf_counter() - start)
    assert report.ok, report.finding
    return size, rate


def run_ledger_bench(base: str | None, events: int, proof_sizes: list[int], grow_to: int = 0) -> None:
    cores = os.cpu_count() or 1
    kind = "PostgreSQL" if resolve_store(base).is_postgres else "SQLite"
    print(f"qledger bench ledger: {events} events per phase on {kind}, {cores} cores")
    with _bench_store(base) as url, tempfile.TemporaryDirectory() as home:
        keys = KeyStore(Path(home))
        app = open_admin_app(url, keys)
        init_store(app, keys)
        alice = add_key(app, keys, "alice", "client")
        app.add_signer(alice)

        a, b = _save_rates(_plain_app(url), app, events)

        processes = min(cores, 16)
        c = _group_commit_rate(url, home, events, writers=16, processes=processes)

        state_bytes = len(app.recorder.select_notifications(start=None, limit=4)[-1].state)
        d = _raw_insert_rate(url, events, state_bytes)
        floor = _signing_cpu_per_event(app, min(events, 5000))
        # An upper bound on (c): every event costs at least ``floor`` of CPU plus its event
        # row at the raw ceiling (1/d; its entry row, the chain and IPC not even counted).
        c_bound = processes / (floor + 1 / d)

        size, e = _verify_rate(app, cores)
        start = time.perf_counter()
        previous = GENESIS_CHAIN_HASH
        for row in app.source().entries(1, None):
            previous = chain_hash(previous, merkle.leaf_hash(row.state or b""))
        e_chain = _rate(size, time.perf_counter() - start)
        f = _ed25519_verify_rate()
        rss = _verify_rss_kib(url, home)

        print(f"(a) plain eventsourcing save          {a:10.0f} events/s   (a and b in alternating rounds)")
        print(f"(b) ledger append, 1 writer           {b:10.0f} events/s   b/a = {b / a:.2f} (target >= 0.8)")
        print(f"(c) ledger, 16 writers, group commit  {c:10.0f} events/s   c/d = {c / d:.2f} (target >= 0.4; "
              f"c target >= 10000; writers in {processes} processes)")
        print(f"(d) raw batched INSERT ceiling        {d:10.0f} rows/s")
        print(f"    bound on (c): create+map+sign {floor * 1e6:.1f} us CPU/event with no database, plus "
              f"1/d for its row: <= {c_bound:.0f} events/s on {processes} cores, c/d <= {c_bound / d:.2f}")
        print(f"(e) verify --jobs {cores}                   {e:10.0f} entries/s  e/(cores*f) = "
              f"{e / (cores * f):.2f} (target >= 0.8)")
        print(f"    chain-only recompute              {e_chain:10.0f} entries/s")
        print(f"(f) Ed25519 verify, one core          {f:10.0f} /s")
        for n in proof_sizes:
            prove = _synthetic_tree(url, n)
            timings = []
            for index in (0, n // 3, n // 2, n - 1):
                t0 = time.perf_counter()
                prove(index, n)
                timings.append(time.perf_counter() - t0)
            print(f"(g) inclusion proof at {n:>8} entries {1000 * max(timings):9.2f} ms worst of 4 "
                  f"(target <= 5 ms at 1M)")
        print(f"(h) peak RSS of `qledger verify` over {size} entries: {rss / 1024:.1f} MiB "
              f"(target <= 150 MiB)")
        if grow_to > size:
            # (e) and (h) again on a ledger grown (by group commit) to grow_to entries.
            _group_commit_rate(url, home, grow_to - size, writers=16, processes=processes)
            size, e = _verify_rate(app, cores)
            print(f"(e) verify --jobs {cores} over {size} entries {e:10.0f} entries/s  e/(cores*f) = "
                  f"{e / (cores * f):.2f}")
            print(f"(h) peak RSS of `qledger verify` over {size} entries: "
                  f"{_verify_rss_kib(url, home) / 1024:.1f} MiB (target <= 150 MiB)")
