"""Workflow definitions: every result-affecting setting explicit, bad fields named."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from qledger.runs.reference_workflows import BELL, GHZ_NOISY, WORKFLOWS, load
from qledger.runs.workflow import (
    WorkflowError,
    WorkflowFileError,
    parse_workflow,
    read_workflow,
    workflow_sha256,
)


def test_reference_workflows_round_trip() -> None:
    for definition in (BELL, GHZ_NOISY, load("qaoa_maxcut")):
        spec = parse_workflow(definition)
        assert spec.to_json() == definition and spec.sha256() == workflow_sha256(definition)


def test_yaml_and_json_are_the_same_definition() -> None:
    assert read_workflow(WORKFLOWS / "ghz_noisy.yaml") == read_workflow(WORKFLOWS / "ghz_noisy.json")


@pytest.mark.parametrize(("change", "field"), [
    (lambda w: w["execute"].pop("seed_simulator"), "execute.seed_simulator"),
    (lambda w: w["transpile"].update(optimization_level=7), "transpile.optimization_level"),
    (lambda w: w["execute"].update(shots=True), "execute.shots"),
    (lambda w: w["execute"].update(backend="ibm_real"), "execute.backend"),
    (lambda w: w["circuit"].update(qubits=3), "circuit.qubits"),
    (lambda w: w.update(extra=1), "extra"),  # an unknown member is named
    (lambda w: w["execute"].update(shots=2048.0), "execute.shots"),  # not an integer
    (lambda w: w.update(name="bell\x00"), "name"),
    (lambda w: w["execute"].update(priority="urgent"), "execute.priority"),
    (lambda w: w.update(schema_version=2), "schema_version"),
])
def test_bad_definitions_name_the_field(change: object, field: str) -> None:
    definition = json.loads(json.dumps(BELL))
    change(definition)  # type: ignore[operator]
    with pytest.raises(WorkflowError) as caught:
        parse_workflow(definition)
    assert caught.value.field == field


def test_unreadable_files_are_reported(tmp_path: Path) -> None:
    bad = tmp_path / "w.yaml"
    bad.write_text("a: [unclosed")
    with pytest.raises(WorkflowFileError, match="not YAML"):
        read_workflow(bad)
    with pytest.raises(WorkflowFileError, match="cannot read"):
        read_workflow(tmp_path / "missing.json")


@pytest.mark.parametrize(("member", "value"), [
    ("name", "\n"), ("name", "bell\n"), ("project", "default\n"),
])
def test_a_trailing_newline_does_not_slip_past_a_pattern(member: str, value: str) -> None:
    """JSON Schema patterns are ECMA-262, whose "$" is the end of the text; Python's "$" also
    matches before a final newline."""
    from qledger.runs.schema import WORKFLOW_SCHEMA, violation

    workflow = {**copy.deepcopy(BELL), member: value}
    found = violation(WORKFLOW_SCHEMA, workflow, "workflow")
    assert found is not None and found.field == member
    with pytest.raises(WorkflowError) as refused:
        parse_workflow(workflow)
    assert refused.value.field == member
