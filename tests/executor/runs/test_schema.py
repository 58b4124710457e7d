"""The shipped schemas' check of a sweep's parameter values: the fast path for plain numbers
must give the library's verdict, and the library's field, for every instance."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qledger.runs import schema
from qledger.runs.circuit_source import CircuitError
from qledger.runs.pubs import parse_pubs
from qledger.runs.reference_workflows import load
from qledger.runs.schema import WORKFLOW_SCHEMA, violation

SWEEP = load("sweep_qasm3")

values_of_any_kind = st.one_of(
    st.integers(-2**60, 2**60), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
    st.text(max_size=2), st.none(), st.just([]))
rows = st.one_of(st.lists(values_of_any_kind, max_size=3),
                 st.lists(st.floats(-10, 10) | st.integers(-5, 5), min_size=2, max_size=2),
                 values_of_any_kind)
parameter_values = st.one_of(st.lists(rows, max_size=6), values_of_any_kind)


def with_values(values: Any) -> dict[str, Any]:
    workflow = copy.deepcopy(SWEEP)
    workflow["execute"]["pubs"] = [{"parameter_values": values, "shots": 10}]
    return workflow


@settings(max_examples=300, deadline=None)
@given(parameter_values)
def test_the_fast_path_gives_the_librarys_verdict(values: Any) -> None:
    fast = violation(WORKFLOW_SCHEMA, with_values(values), "workflow")
    with pytest.MonkeyPatch.context() as patch:  # every list the library's way, item by item
        patch.setattr(schema, "_plain_numbers", lambda _values: False)
        library = violation(WORKFLOW_SCHEMA, with_values(values), "workflow")
    assert fast == library


def test_bools_and_strings_among_thousands_of_numbers_are_named() -> None:
    values: list[list[Any]] = [[0.5, 1]] * 2000
    for bad, at in ((True, 1500), ("0.5", 7), (None, 1999)):
        changed = [*values[:at], [0.5, bad], *values[at + 1:]]
        found = violation(WORKFLOW_SCHEMA, with_values(changed), "workflow")
        assert found is not None and found.field == f"execute.pubs[0].parameter_values[{at}][1]"
    assert violation(WORKFLOW_SCHEMA, with_values(values), "workflow") is None


def _first_bad(values: list[Any], width: int) -> int | None:
    for j, binding in enumerate(values):
        if not (isinstance(binding, list) and len(binding) == width and all(
                isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v) for v in binding)):
            return j
    return None


@settings(max_examples=300, deadline=None)
@given(st.lists(rows, min_size=1, max_size=6))
def test_bindings_are_refused_by_the_first_bad_one(values: list[Any]) -> None:
    bad = _first_bad(values, 2)
    pub = {"parameter_values": values, "shots": 10}
    if bad is None:
        parsed = parse_pubs("sampler", [pub], ("phi", "theta"), 3)
        assert np.array_equal(parsed[0].values, np.array(values, dtype=float).reshape(len(values), 2))
    else:
        with pytest.raises(CircuitError) as caught:
            parse_pubs("sampler", [pub], ("phi", "theta"), 3)
        assert caught.value.field == f"execute.pubs[0].parameter_values[{bad}]"
