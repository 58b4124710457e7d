"""Example python steps.  A step is a function of one JSON object (its inputs) returning one
JSON object, with the JSON Schemas of both as attributes; qledger checks both."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

Step = Callable[[dict[str, Any]], dict[str, Any]]


def declares(input_schema: dict[str, Any], output_schema: dict[str, Any]) -> Callable[[Step], Step]:
    def attach(step: Step) -> Step:
        step.input_schema = input_schema  # type: ignore[attr-defined]
        step.output_schema = output_schema  # type: ignore[attr-defined]
        return step
    return attach


POINTS = {"type": "object", "required": ["points"], "properties": {"points": {
    "type": "object", "required": ["x"], "properties": {"x": {"type": "array", "items": {"type": "number"},
                                                              "minItems": 1}}}}}
BINDINGS = {"type": "object", "required": ["parameter_values"], "properties": {"parameter_values": {
    "type": "array", "items": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}}}}


@declares(POINTS, BINDINGS)
def features(inputs: dict[str, Any]) -> dict[str, Any]:
    """Feature preparation: each point x in [0, 1] becomes the angles (theta, phi) of one binding."""
    return {"parameter_values": [[round(math.pi * x, 12), round(math.pi * x / 2, 12)]
                                 for x in inputs["points"]["x"]]}


@declares({"type": "object", "required": ["results", "threshold"], "properties": {
    "results": {"type": "array"}, "threshold": {"type": "number"}}},
    {"type": "object", "required": ["decision", "even_parity"], "properties": {
        "decision": {"enum": ["accept", "reject"]}, "even_parity": {"type": "array"}}})
def decision(inputs: dict[str, Any]) -> dict[str, Any]:
    """Post-processing: the share of even-parity outcomes per binding, and one decision."""
    shares = []
    for binding in inputs["results"][0]["results"]:
        counts = next(iter(binding.values()))  # the one classical register
        total = sum(counts.values())
        shares.append(round(sum(n for bits, n in counts.items() if bits.count("1") % 2 == 0) / total, 12))
    mean = sum(shares) / len(shares)
    return {"decision": "accept" if mean >= inputs["threshold"] else "reject", "even_parity": shares}


ANYTHING = {"type": "object"}


@declares(ANYTHING, ANYTHING)
def raises(inputs: dict[str, Any]) -> dict[str, Any]:
    raise ValueError("the example step that always fails")


@declares(ANYTHING, ANYTHING)
def sleeps(inputs: dict[str, Any]) -> dict[str, Any]:
    time.sleep(float(inputs.get("seconds", 3600)))
    return {}


@declares(ANYTHING, ANYTHING)
def hogs(inputs: dict[str, Any]) -> dict[str, Any]:
    hoard = [bytearray(64 << 20) for _ in range(int(inputs.get("blocks", 64)))]  # 4 GiB by default
    return {"blocks": len(hoard)}


@declares(ANYTHING, {"type": "object", "required": ["answer"], "properties": {"answer": {"type": "integer"}}})
def bad_output(inputs: dict[str, Any]) -> dict[str, Any]:
    return {"answer": "forty-two"}
