"""``qledger bench executor`` and ``qledger bench projections`` (``bench ledger`` is the ledger's)."""

from __future__ import annotations

from typing import Annotated

import typer

from qledger.ledger.cli_common import StoreOption, reported_errors


def register(bench_app: typer.Typer) -> None:
    bench_app.command("executor")(bench_executor)
    bench_app.command("projections")(bench_projections)
    bench_app.command("sweep")(bench_sweep)
    bench_app.command("client")(bench_client)


def bench_executor(store: StoreOption = None,
                   runs: Annotated[int, typer.Option(min=5)] = 50) -> None:
    """Raw Aer run() vs the same workflow through the service (p50/p99), and 16-client runs/s."""
    from qledger.bench.executor_overhead import run_executor_bench

    with reported_errors():
        run_executor_bench(store, runs)


def bench_projections(store: StoreOption = None,
                      entries: Annotated[int, typer.Option(min=1000)] = 100_000) -> None:
    """Rebuild entries/s per projection, lineage queries, one run's bundle export and verify."""
    from qledger.bench.projections import run_projections_bench

    with reported_errors():
        run_projections_bench(store, entries)


def bench_sweep(store: StoreOption = None,
                bindings: Annotated[int, typer.Option(min=1, max=100_000)] = 1000,
                shots: Annotated[int, typer.Option(min=1)] = 1024) -> None:
    """One submission of a 5-qubit parameter sweep through the service against the same PUB on
    Aer's SamplerV2 directly (target: <= 1.25x), and PUB results recorded per second."""
    from qledger.bench.sweep import run_sweep_bench

    with reported_errors():
        run_sweep_bench(store, bindings, shots)


def bench_client(store: StoreOption = None,
                 calls: Annotated[int, typer.Option(min=1, max=10_000)] = 200) -> None:
    """A Qiskit SamplerV2 loop of small circuits directly on Aer versus through LedgerSampler:
    the overhead per call, p50 and p99."""
    from qledger.bench.client import run_client_bench

    with reported_errors():
        run_client_bench(store, calls)
