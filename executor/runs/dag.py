"""A workflow's steps as a declared DAG: validated, then ordered topologically.

Each step names its kind and the steps it ``needs``.  The data each kind consumes fixes
which kinds must be upstream of it (a circuit cannot be transpiled before it exists);
any DAG that respects those needs is accepted, and runs in a deterministic topological
order (``graphlib``, ties broken by step id).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from graphlib import CycleError, TopologicalSorter
from typing import Any

from qledger.ledger.errors import DefinitionError

# kind -> kinds that must be upstream of it (transitively)
REQUIRES: dict[str, frozenset[str]] = {
    "data_preparation": frozenset(),
    "circuit_synthesis": frozenset({"data_preparation"}),
    "transpilation": frozenset({"circuit_synthesis"}),
    "hybrid_optimisation": frozenset({"transpilation"}),
    "execution": frozenset({"transpilation"}),
    "post_processing": frozenset({"execution"}),
    "report": frozenset({"post_processing"}),
}
HYBRID = "hybrid_optimisation"
PYTHON = "python"  # a step of installed code (runs.python_steps): any number of them
# What a python step's input may come from, and the kind that must be upstream of it.
INPUT_NEEDS = {"dataset": "data_preparation", "results": "execution"}


class DagError(DefinitionError):
    """The declared steps are wrong (``workflow`` reports it as a WorkflowError)."""


@dataclass(frozen=True)
class Step:
    id: str
    kind: str
    needs: tuple[str, ...]
    entry_point: str = ""  # python: the entry point's name in the group qledger.steps
    inputs: tuple[tuple[str, dict[str, Any]], ...] = ()  # python: input name -> its source

    def to_json(self) -> dict[str, Any]:
        extra = {"entry_point": self.entry_point, "inputs": dict(self.inputs)} if self.kind == PYTHON else {}
        return {"id": self.id, "kind": self.kind, "needs": list(self.needs), **extra}


def parse_steps(value: Any, hybrid: bool) -> tuple[Step, ...]:
    """Validate the declared steps; ``hybrid`` says whether the template has a classical loop."""
    if not isinstance(value, list) or not value:
        raise DagError("steps", "must be a non-empty list")
    steps: list[Step] = []
    for i, raw in enumerate(value):
        where = f"steps[{i}]"
        python = isinstance(raw, dict) and raw.get("kind") == PYTHON
        members = {"id", "kind", "needs"} | ({"entry_point", "inputs"} if python else set())
        if not isinstance(raw, dict) or set(raw) != members:
            raise DagError(where, "a step has exactly id, kind and needs (a python step also "
                           "entry_point and inputs)")
        if not isinstance(raw["id"], str) or not raw["id"]:
            raise DagError(f"{where}.id", "must be a non-empty string")
        if raw["kind"] not in REQUIRES and not python:
            known = sorted([*REQUIRES, PYTHON])
            raise DagError(f"{where}.kind", f"unknown kind {raw['kind']!r}; known: {known}")
        needs = raw["needs"]
        if not isinstance(needs, list) or not all(isinstance(n, str) for n in needs):
            raise DagError(f"{where}.needs", "must be a list of step ids")
        inputs = tuple(sorted(raw["inputs"].items())) if python and isinstance(raw["inputs"], dict) else ()
        steps.append(Step(raw["id"], raw["kind"], tuple(needs), str(raw.get("entry_point", "")), inputs))
    ids = [s.id for s in steps]
    if len(set(ids)) != len(ids):
        raise DagError("steps", "step ids must be unique")
    kinds = [s.kind for s in steps if s.kind != PYTHON]
    wanted = set(REQUIRES) - ({HYBRID} if not hybrid else set())
    if sorted(kinds) != sorted(wanted):
        raise DagError("steps", f"this template has exactly one step of each kind {sorted(wanted)}")
    by_id = {s.id: s for s in steps}
    for i, step in enumerate(steps):
        for need in step.needs:
            if need not in by_id:
                raise DagError(f"steps[{i}].needs", f"no step {need!r}")
    try:
        order_of(steps)
    except CycleError as exc:
        raise DagError("steps", f"the steps form a cycle: {exc.args[1]}") from exc
    for i, step in enumerate(steps):
        upstream = _upstream_kinds(step, by_id)
        if step.kind == PYTHON:
            _check_inputs(i, step, by_id, upstream)
            continue
        missing = REQUIRES[step.kind] - upstream
        if hybrid and step.kind == "execution":
            missing |= {HYBRID} - upstream
        if missing:
            raise DagError(f"steps[{i}].needs", f"{step.kind} needs {sorted(missing)} upstream")
    return tuple(steps)


def _check_inputs(i: int, step: Step, by_id: dict[str, Step], upstream_kinds: set[str]) -> None:
    """Each input's source must be computed before the step: its kind, or its step, upstream."""
    upstream = upstream_ids(step, by_id)
    for name, source in step.inputs:
        where = f"steps[{i}].inputs.{name}"
        for key, kind in INPUT_NEEDS.items():
            if key in source and kind not in upstream_kinds:
                raise DagError(where, f"reads {key}: the {kind} step must be upstream of {step.id!r}")
        if "step" in source:
            producer = by_id.get(str(source["step"]))
            if producer is None or producer.kind != PYTHON:
                raise DagError(f"{where}.step", f"no python step {source['step']!r}")
            if producer.id not in upstream:
                raise DagError(f"{where}.step", f"{producer.id!r} must be upstream of {step.id!r}")


def upstream_ids(step: Step, by_id: dict[str, Step]) -> set[str]:
    """Every step ``step`` depends on, transitively."""
    seen: set[str] = set()
    stack = list(step.needs)
    while stack:
        current = stack.pop()
        if current not in seen:
            seen.add(current)
            stack.extend(by_id[current].needs)
    return seen


def _upstream_kinds(step: Step, by_id: dict[str, Step]) -> set[str]:
    return {by_id[i].kind for i in upstream_ids(step, by_id)}


def order_of(steps: Sequence[Step]) -> list[Step]:
    """A deterministic topological order: ready steps are taken by id."""
    sorter: TopologicalSorter[str] = TopologicalSorter({s.id: s.needs for s in steps})
    sorter.prepare()
    by_id = {s.id: s for s in steps}
    order: list[Step] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready())
        for step_id in ready:
            order.append(by_id[step_id])
            sorter.done(step_id)
    return order


def linear_steps(hybrid: bool) -> list[dict[str, Any]]:
    """The plain chain of steps, as a definition would declare it."""
    kinds = ["data_preparation", "circuit_synthesis", "transpilation",
             *([HYBRID] if hybrid else []), "execution", "post_processing", "report"]
    return [{"id": k, "kind": k, "needs": [kinds[i - 1]] if i else []} for i, k in enumerate(kinds)]
