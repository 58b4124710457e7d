"""Classical steps from installed code: a step of kind ``python`` names an entry point in the
group ``qledger.steps`` of an installed distribution, which the server's configuration must
allow (a request never brings code).  Each runs in a child process of its own under a time and
a memory limit (``runs.step_child``), so a crash, a hang or a memory blow-up is a failure of
the run, recorded with its class, and the executor serves on.  What ran is recorded: the
distribution's name and version and the SHA-256 of the step's module source.

No Qiskit here: the child imports this module before it loads the step.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

from qledger.ledger.canonical import canonical_bytes
from qledger.ledger.errors import QledgerError

GROUP = "qledger.steps"
STDERR_TAIL = 2000  # characters of a failed step's stderr kept in the record


class PythonStepError(QledgerError):
    """A python step could not give its output; the subclass says why."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class StepNotAllowedError(PythonStepError):
    """The entry point is not installed here, or the server's configuration does not allow it."""

    hint = "allow it on the server: qledger serve --allow-step NAME"


class StepTimeoutError(PythonStepError):
    """The step ran past its time limit and was killed."""


class StepMemoryError(PythonStepError):
    """The step tried to use more memory than its limit."""


class StepCrashedError(PythonStepError):
    """The step raised, or its process died."""


class StepSchemaError(PythonStepError):
    """The step's inputs or its output break the JSON Schema the step declares."""


@dataclass(frozen=True)
class StepPolicy:
    """What the server allows python steps: which entry points, how long, how much memory."""

    allowed: frozenset[str] = frozenset()
    timeout_seconds: float = 60.0
    memory_bytes: int = 2 << 30


def installed(name: str) -> EntryPoint:
    found = entry_points(group=GROUP, name=name)
    if not found:
        raise StepNotAllowedError(f"no installed distribution has the entry point {name!r} in {GROUP}")
    return next(iter(found))


def code_of(name: str) -> dict[str, Any]:
    """What runs under ``name``: its distribution, version, module and the module's SHA-256."""
    entry = installed(name)
    spec = importlib.util.find_spec(entry.module)
    origin = spec.origin if spec is not None else None
    source = Path(origin).read_bytes() if origin and origin.endswith(".py") else b""
    distribution = entry.dist
    return {"entry_point": name, "object": entry.value,
            "distribution": {"name": distribution.name if distribution else None,
                             "version": distribution.version if distribution else None},
            "module": entry.module, "module_sha256": hashlib.sha256(source).hexdigest()}


def run_step(name: str, inputs: dict[str, Any], policy: StepPolicy) -> tuple[Any, dict[str, Any]]:
    """The step's output for ``inputs``, computed in a child process under the policy's limits,
    and the facts a record keeps (the code, the inputs' digest, the time)."""
    if name not in policy.allowed:
        raise StepNotAllowedError(f"this server does not allow the step {name!r}")
    code = code_of(name)
    data = canonical_bytes(inputs)
    t0 = time.perf_counter()
    try:
        child = subprocess.run(
            [sys.executable, "-m", "qledger.runs.step_child", name, str(policy.memory_bytes)],
            input=data, capture_output=True, timeout=policy.timeout_seconds, check=False)
    except subprocess.TimeoutExpired:
        raise StepTimeoutError(f"step {name!r} ran past its limit of {policy.timeout_seconds:g} s "
                               "and was killed") from None
    facts = {**code, "inputs_sha256": hashlib.sha256(data).hexdigest(),
             "child_ms": round(1000 * (time.perf_counter() - t0), 3)}
    stderr = child.stderr.decode(errors="replace")[-STDERR_TAIL:]
    if child.returncode == 3:
        error = json.loads(child.stdout)["error"]
        raise StepSchemaError(error["message"], error["field"])
    if child.returncode != 0:
        last = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit status {child.returncode}"
        if "MemoryError" in stderr:
            raise StepMemoryError(f"step {name!r} went past its memory limit of "
                                  f"{policy.memory_bytes // (1 << 20)} MiB: {last}")
        raise StepCrashedError(f"step {name!r} failed: {last}")
    return json.loads(child.stdout)["output"], facts
