"""qledger: a provenance ledger for hybrid quantum-classical workflows.

This package is the executor (installed from ``executor/``): the workflow engine and the gRPC
service that records every step, in wings that each import only those below them and the
ledger::

    ops          metrics, traces, logs
    runs         workflows, DAGs, backends, circuits, the pipeline, the queue, the worker
    provenance   run entries, lineage, projections, reports, bundles
    governance   policy, its changes, admission and routing
    rpc          servicers, server, status mapping, authorisation, the client channel
    client       the Python client: Client, runs, results as Qiskit objects
    cli, bench   the ``qledger`` command (the composition root) and the benchmarks

``qledger.ledger`` (installed from ``ledger/``) is the signed log itself and imports nothing
from here.  The names below are the client API; each is imported on first use, so ``import
qledger`` loads neither Qiskit nor gRPC.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import Any

_PUBLIC = {
    "Client": "qledger.client.client",
    "RunHandle": "qledger.client.client",
    "RunResult": "qledger.client.results",
    "RunFailedError": "qledger.ledger.errors",
    "CallFailedError": "qledger.ledger.errors",
    "RequestRefusedError": "qledger.ledger.errors",
    "InvalidRequestError": "qledger.ledger.errors",
    "UnauthenticatedError": "qledger.ledger.errors",
    "PermissionDeniedError": "qledger.ledger.errors",
    "NotFoundError": "qledger.ledger.errors",
    "AlreadyExistsError": "qledger.ledger.errors",
    "ExhaustedError": "qledger.ledger.errors",
    "PreconditionError": "qledger.ledger.errors",
    "client_channel": "qledger.rpc.channel",
    "submit_command": "qledger.runs.commands",
    "cancel_command": "qledger.runs.commands",
    "read_workflow": "qledger.runs.workflow",
    "KeyStore": "qledger.ledger.keys",
    "SigningKey": "qledger.ledger.keys",
    "QledgerError": "qledger.ledger.errors",
}
__all__ = ["__version__", *_PUBLIC]

try:
    __version__ = metadata.version("qledger-provenance")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'qledger' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
