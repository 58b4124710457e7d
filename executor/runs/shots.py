"""Shots, counted one way everywhere.

A run *reserves* the most shots its definition can take when it is accepted (what a budget
must have room for) and *takes* the shots its simulators actually ran, which its step records
state as ``shots_taken``: every evaluation of an optimiser loop, every quality round, every
binding of a Sampler PUB.  When the run ends the reservation is settled to what it took.  The
usage projection (``quota show``), the operations projection (``qledger ops``) and the
``qledger_shots_total`` metric all count ``shots_taken``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def reserved_shots(workflow: dict[str, Any]) -> int:
    """The most shots a run of this definition can take: what a budget must have room for.
    (Aer's Estimator computes expectation values exactly: its PUBs take no shots.)"""
    pubs = workflow["execute"].get("pubs")
    if workflow["execute"].get("primitive") == "estimator" and pubs is None:
        return 0  # a variational eigensolver on the Estimator, which takes no shots
    if pubs is not None:
        return sum(int(p.get("shots") or 0) * _bindings(p.get("parameter_values")) for p in pubs)
    shots = int(workflow["execute"]["shots"])
    quality = workflow.get("quality")
    if quality:
        shots = max(shots, int(quality["max_shots"]))
    optimizer = workflow.get("optimizer")
    if optimizer:
        shots *= int(optimizer["maxiter"]) + 2  # every evaluation of the loop, then the final run
    return shots


def _bindings(values: Any) -> int:
    """How many bindings a PUB may have: those it lists, or the most a python step may give."""
    if isinstance(values, dict):
        return int(values.get("max_bindings") or 1)
    return max(1, len(values or [[]]))


def step_shots(record: dict[str, Any]) -> int:
    """The shots one recorded step took.  A PUB chunk took its PUB's shots for each of its
    bindings; an execution or an optimiser loop states its ``shots_taken`` (records written
    before they did count their execution's final shots, the best those tell).  A sweep's
    closing execution record only sums its chunks, so it adds nothing."""
    if "shots_taken" in record:
        return int(record["shots_taken"])
    kind = record.get("kind")
    if kind == "pub_result" and record.get("shots"):
        first, stop = record["bindings"]
        return int(record["shots"]) * (int(stop) - int(first))
    if kind == "execution" and "pubs" not in record:
        return int(record.get("shots") or 0)
    return 0


def shots_taken(records: Iterable[dict[str, Any]]) -> int:
    """The shots a run took, from its step records."""
    return sum(step_shots(r) for r in records)
