"""The reference workflows shipped with qledger (executor/workflows/*.json, installed in the package)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"


def names() -> list[str]:
    """The reference workflows by the name ``load`` and ``qledger submit NAME`` take."""
    return sorted(path.stem for path in WORKFLOWS.glob("*.json"))


def summary(name: str) -> dict[str, Any]:
    """What ``qledger workflows list`` shows of one: its workflow name, circuit, backend."""
    workflow = load(name)
    circuit = workflow.get("circuit", {})
    execute = workflow.get("execute", {})
    kind = execute.get("primitive") or ("variational" if workflow.get("optimizer") else "counts")
    return {"name": name, "workflow": workflow.get("name"), "backend": execute.get("backend"),
            "circuit": circuit.get("template") or circuit.get("format"), "qubits": circuit.get("qubits"),
            "primitive": kind}


def load(name: str) -> dict[str, Any]:
    value: dict[str, Any] = json.loads((WORKFLOWS / f"{name}.json").read_text(encoding="utf-8"))
    return value


BELL = load("bell")
GHZ_NOISY = load("ghz_noisy")
