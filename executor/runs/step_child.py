"""The child process a python step runs in (``python -m qledger.runs.step_child NAME BYTES``).

It loads the entry point NAME of the group ``qledger.steps``, reads the step's inputs as JSON
on stdin, checks them against the step's ``input_schema``, calls it, checks what it returns
against its ``output_schema``, and writes one JSON object on stdout: ``{"output": ...}``, or
``{"error": {"class", "message", "field"}}`` with exit status 3 when the step refused its
inputs or broke its own output schema.  Anything else (an exception, a crash, a kill at the
time or memory limit) the parent reads from the exit status and stderr.
"""

from __future__ import annotations

import json
import resource
import sys
from importlib.metadata import entry_points
from typing import Any

import jsonschema

from qledger.runs.python_steps import GROUP

SCHEMA_REFUSED = 3


def _violation(schema: dict[str, Any], value: Any, what: str) -> dict[str, str] | None:
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(value))
    if error is None:
        return None
    path = ".".join(str(p) for p in error.absolute_path)
    return {"class": "StepSchemaError", "message": f"{what}: {error.message}",
            "field": f"{what}{'.' + path if path else ''}"}


def main(name: str, memory_bytes: int) -> int:
    # The limit is set here, before the step's code is loaded: a limit set by the parent between
    # fork and exec is unsafe in a threaded server.  RLIMIT_DATA counts the heap and private
    # mappings, what an allocation grows, not the address space libraries reserve.
    resource.setrlimit(resource.RLIMIT_DATA, (memory_bytes, memory_bytes))
    (found,) = entry_points(group=GROUP, name=name)
    step = found.load()
    inputs = json.loads(sys.stdin.read())
    refused = _violation(getattr(step, "input_schema", {}), inputs, "inputs")
    if refused is None:
        output = step(inputs)
        refused = _violation(getattr(step, "output_schema", {}), output, "output")
    if refused is not None:
        json.dump({"error": refused}, sys.stdout)
        return SCHEMA_REFUSED
    json.dump({"output": output}, sys.stdout, allow_nan=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2])))
