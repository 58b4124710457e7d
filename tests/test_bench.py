"""Every benchmark runs end to end at a small size, so a broken benchmark fails CI.

These check that each figure and its baseline are printed and sane, never how fast anything
is: speed targets are read off the full-size runs recorded in the README.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import ONLY_POSTGRES


def bench(tmp_path: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "qledger.cli", "bench", *args], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "QLEDGER_HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    return done.stdout


def figures(text: str, pattern: str) -> list[float]:
    return [float(x.replace(",", "")) for x in re.findall(pattern, text)]


# The benchmarks' code is the same on either store; PostgreSQL is the one with a path of its own
# (the time budget).  The sweep, whose SQLite figure the README quotes, runs on both.
@ONLY_POSTGRES
def test_bench_projections(store_url: str, tmp_path: Path) -> None:
    base = store_url.split("?")[0]
    out = bench(tmp_path, "projections", "--store", base, "--entries", "2000")
    rates = figures(out, r"rebuild \w+ +\d+ entries in +[\d.]+s +([\d,]+) entries/s")
    assert len(rates) == 3 and all(r > 0 for r in rates)  # lineage, operations, usage
    assert "lineage query: ancestors of a result" in out
    export_ms = figures(out, r"export +([\d.]+) ms")
    assert len(export_ms) == 2 and "large/small ledger: export x" in out


@ONLY_POSTGRES
def test_bench_ledger(store_url: str, tmp_path: Path) -> None:
    base = store_url.split("?")[0] if store_url.startswith("postgresql") else f"sqlite:///{tmp_path}/bench.db"
    ledger = bench(tmp_path, "ledger", "--store", base, "--events", "200", "--proof-sizes", "1000",
                   "--grow-to", "700")
    for label in ("(a)", "(b)", "(c)", "(d)", "(e)", "(f)", "(g)", "(h)"):
        assert label in ledger
    assert figures(ledger, r"b/a = ([\d.]+)")[0] > 0
    # (c) ran its writers in several processes, all through group commits, and they all landed.
    assert figures(ledger, r"\(c\) ledger, 16 writers, group commit +([\d.]+) events/s")[0] > 0
    assert figures(ledger, r"verify` over (\d+) entries")[0] >= 200 + 192  # (b) and (c) all landed
    # The bound on (c) is what its own figures say: cores / (CPU per event + 1/d).
    found = re.search(r"create\+map\+sign ([\d.]+) us CPU/event.*<= (\d+) events/s on \d+ cores, "
                      r"c/d <= ([\d.]+)", ledger)
    assert found is not None, ledger
    floor_us, bound, ratio = map(float, found.groups())
    d = figures(ledger, r"\(d\) raw batched INSERT ceiling +([\d.]+) rows/s")[0]
    assert floor_us > 0 and abs(ratio - bound / d) < 0.01
    # --grow-to: (e) and (h) again once the ledger has grown to at least 700 entries.
    assert figures(ledger, r"\(e\) verify --jobs \d+ over (\d+) entries")[0] >= 700
    assert max(figures(ledger, r"verify` over (\d+) entries")) >= 700


def test_bench_sweep(store_url: str, tmp_path: Path) -> None:
    base = store_url.split("?")[0] if store_url.startswith("postgresql") else f"sqlite:///{tmp_path}/bench.db"
    out = bench(tmp_path, "sweep", "--store", base, "--bindings", "250", "--shots", "64")
    direct = figures(out, r"direct Aer SamplerV2, one call +([\d.]+) ms")
    service = figures(out, r"through the service \(submit..completed\) +([\d.]+) ms")
    ratio = figures(out, r"ratio ([\d.]+) \(target")
    assert len(direct) == 1 and direct[0] > 0 and len(service) == 1 and len(ratio) == 1
    assert abs(ratio[0] - service[0] / direct[0]) < 0.01
    counts_only = figures(out, r"direct Aer simulator, counts only +([\d.]+) ms")
    against_counts = figures(out, r"; ([\d.]+) x counts only")
    assert len(counts_only) == 1 and abs(against_counts[0] - service[0] / counts_only[0]) < 0.01
    end_to_end = figures(out, r"PUB results, end to end +([\d.]+) bindings/s")
    recorded = figures(out, r"PUB results recorded \(time outside Aer\) +([\d.]+) bindings/s")
    assert len(end_to_end) == len(recorded) == 1 and recorded[0] > end_to_end[0] > 0
    shared = figures(out, r"shared by 2 executor processes +([\d.]+) ms")
    if base.startswith("postgresql"):  # the same sweep, with a second executor process helping
        speedup = figures(out, r"([\d.]+)x one process")
        assert len(shared) == 1 and shared[0] > 0 and abs(speedup[0] - service[0] / shared[0]) < 0.01
    else:
        assert shared == []


def test_bench_executor(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/bench.db"
    executor = bench(tmp_path, "executor", "--store", store, "--runs", "5")
    assert "overhead per run" in executor and "runs/s" in executor


def test_bench_client(tmp_path: Path) -> None:
    out = bench(tmp_path, "client", "--store", f"sqlite:///{tmp_path}/bench.db", "--calls", "8")
    direct = figures(out, r"Aer's SamplerV2 directly +p50 +([\d.]+) ms")
    ledger = figures(out, r"LedgerSampler +p50 +([\d.]+) ms")
    p50 = figures(out, r"overhead per call +p50 +([\d.]+) ms")
    p99 = figures(out, r"overhead per call +p50 +[\d.]+ ms +p99 +([\d.]+) ms")
    assert len(direct) == len(ledger) == 1 and ledger[0] > direct[0] > 0
    assert len(p50) == len(p99) == 1 and 0 < p50[0] <= p99[0]
    assert "results equal bit for bit: yes" in out
