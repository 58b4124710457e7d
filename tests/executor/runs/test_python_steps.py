"""Python steps from installed code over a real loopback server: the example distribution
(tests/example_steps, installed for these tests) around a Sampler sweep, and every way a step
can fail, each recorded with its class while the executor serves on."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from qledger.ledger import dsse
from qledger.provenance.report import report, run_facts
from qledger.runs.python_steps import StepPolicy
from qledger.runs.reference_workflows import BELL
from tests.conftest import ONLY_SQLITE
from tests.executor.conftest import Service, ServiceFactory, step_records
from tests.executor.rpc.test_grpc import field_violations

EXAMPLE = Path(__file__).resolve().parents[2] / "example_steps"
ALLOWED = frozenset({"example.features", "example.decision", "example.raises", "example.sleeps",
                     "example.hogs", "example.bad_output"})


@pytest.fixture(scope="module")
def installed_steps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The example distribution installed (pip, from its pyproject) where this process and the
    step processes it starts find it."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "--target", str(target), str(EXAMPLE)], check=True)
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(target), before) if p)
    sys.path.insert(0, str(target))
    yield target
    sys.path.remove(str(target))
    if before is None:
        del os.environ["PYTHONPATH"]
    else:
        os.environ["PYTHONPATH"] = before


@pytest.fixture
def steps_service(service_factory: ServiceFactory, installed_steps: Path) -> Service:
    return service_factory(steps=StepPolicy(ALLOWED, timeout_seconds=3.0, memory_bytes=256 << 20))


def finished(service: Service, workflow: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    run_id = service.submit(workflow).run.run_id
    return run_id, [json.loads(dsse.parse(e.envelope).payload) for e in service.watch(run_id)]


def with_step(entry_point: str, inputs: dict[str, Any]) -> dict[str, Any]:
    workflow = copy.deepcopy(BELL)
    workflow["steps"].insert(1, {"id": "probe", "kind": "python", "needs": ["data_preparation"],
                                 "entry_point": entry_point, "inputs": inputs})
    return workflow


def test_the_example_steps_feed_a_sweep_and_decide_on_its_counts(steps_service: Service,
                                                                 installed_steps: Path) -> None:
    workflow = json.loads((EXAMPLE / "workflow.json").read_text())
    _, entries = finished(steps_service, workflow)
    assert entries[-1]["event_type"].endswith("Run.Completed"), entries[-1]["payload"]
    records = step_records(entries)
    features, decision = records["features"], records["decision"]
    assert features["distribution"] == {"name": "qledger-example-steps", "version": "1.0.0"}
    module = installed_steps / "qledger_example_steps" / "__init__.py"
    assert features["module_sha256"] == hashlib.sha256(module.read_bytes()).hexdigest()
    points = workflow["datasets"]["points"]["x"]
    assert len(features["output"]["parameter_values"]) == len(points)
    chunk = next(r for step, r in records.items() if step.startswith("execution/pub0/"))
    assert chunk["bindings"] == [0, len(points)]
    assert decision["output"]["decision"] in ("accept", "reject")
    assert len(decision["output"]["even_parity"]) == len(points)
    # The decision read the counts the run recorded: binding 0 (theta 0) gives |00> only.
    assert decision["output"]["even_parity"][0] == 1.0


@ONLY_SQLITE
@pytest.mark.parametrize(("entry_point", "inputs", "error_class", "said"), [
    ("example.raises", {}, "StepCrashedError", "ValueError: the example step that always fails"),
    ("example.sleeps", {"seconds": {"value": 30}}, "StepTimeoutError", "limit of 3 s"),
    ("example.hogs", {}, "StepMemoryError", "memory limit of 256 MiB"),
    ("example.bad_output", {}, "StepSchemaError", "output"),
    ("example.features", {"points": {"value": {"y": [1]}}}, "StepSchemaError", "inputs"),
])
def test_a_failing_step_is_a_recorded_failure_and_the_executor_serves_on(
        steps_service: Service, entry_point: str, inputs: dict[str, Any], error_class: str,
        said: str) -> None:
    _, entries = finished(steps_service, with_step(entry_point, inputs))
    failed = entries[-1]["payload"]
    assert entries[-1]["event_type"].endswith("Run.Failed")
    assert failed["error_class"] == error_class and failed["step"] == "probe" and said in failed["message"]
    _, after = finished(steps_service, BELL)
    assert after[-1]["event_type"].endswith("Run.Completed")


@ONLY_SQLITE
def test_a_step_the_server_does_not_allow_is_refused_before_anything_is_recorded(
        service_factory: ServiceFactory, installed_steps: Path) -> None:
    service = service_factory(steps=StepPolicy(frozenset({"example.features"})))
    size = service.app.tree_size()
    with pytest.raises(grpc.RpcError) as refused:
        service.submit(with_step("example.raises", {}))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
    assert field_violations(refused.value) == ["workflow.steps[1].entry_point"]
    assert service.app.tree_size() == size


@ONLY_SQLITE
def test_changed_step_code_shows_in_the_report_as_code(steps_service: Service, installed_steps: Path) -> None:
    workflow = json.loads((EXAMPLE / "workflow.json").read_text())
    first, entries = finished(steps_service, workflow)
    module = installed_steps / "qledger_example_steps" / "__init__.py"
    original = module.read_text()
    try:
        module.write_text(original + "\n# a later release of the preprocessing library\n")
        second, again = finished(steps_service, workflow)
    finally:
        module.write_text(original)
    facts = [run_facts([dsse.parse(e.envelope).canonical for e in steps_service.watch(r)])
             for r in (first, second)]
    assert "code" in report(facts[0], facts[1])["comparison"]["changed"]
    assert step_records(entries)["features"]["output"] == step_records(again)["features"]["output"]
