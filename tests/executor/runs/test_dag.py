"""The declared step DAG: validation errors name the field; any valid DAG runs in topological order."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from qledger.runs.dag import DagError, linear_steps, order_of, parse_steps
from qledger.runs.reference_workflows import BELL
from qledger.runs.workflow import WorkflowError, parse_workflow


def steps_with(change: Any) -> list[dict[str, Any]]:
    steps = copy.deepcopy(linear_steps(hybrid=False))
    change(steps)
    return steps


@pytest.mark.parametrize(("change", "field", "words"), [
    (lambda s: s[0].update(needs=["report"]), "steps", "cycle"),
    (lambda s: s[2].update(needs=[]), "steps[2].needs", "circuit_synthesis"),
    (lambda s: s[1].update(kind="teleport"), "steps[1].kind", "unknown kind"),
    (lambda s: s[1].update(id="data_preparation"), "steps", "unique"),
    (lambda s: s.pop(), "steps", "exactly one step of each kind"),
    (lambda s: s[3].update(needs=["nowhere"]), "steps[3].needs", "no step"),
    (lambda s: s[0].update(extra=1), "steps[0]", "exactly id, kind and needs"),
])
def test_invalid_dags_are_refused(change: Any, field: str, words: str) -> None:
    with pytest.raises(DagError) as caught:
        parse_steps(steps_with(change), hybrid=False)
    assert caught.value.field == field and words in caught.value.description


def test_hybrid_templates_need_the_loop_before_execution() -> None:
    steps = linear_steps(hybrid=True)
    parse_steps(steps, hybrid=True)
    steps[4]["needs"] = ["transpilation"]  # execution no longer waits for the optimiser
    with pytest.raises(DagError, match="hybrid_optimisation"):
        parse_steps(steps, hybrid=True)


def test_any_valid_dag_runs_in_a_deterministic_topological_order() -> None:
    steps = steps_with(lambda s: s[5].update(needs=["post_processing", "data_preparation"]))
    order = [s.id for s in order_of(parse_steps(steps, hybrid=False))]
    assert order == [s["id"] for s in linear_steps(hybrid=False)]
    definition = {**BELL, "steps": steps}
    assert parse_workflow(definition).to_json() == definition
    with pytest.raises(WorkflowError) as caught:
        parse_workflow({**BELL, "steps": steps_with(lambda s: s[0].update(needs=["report"]))})
    assert caught.value.field == "steps"
