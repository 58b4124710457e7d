"""The reference workflows shipped with qledger (executor/workflows/*.json, installed in the package)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"


def load(name: str) -> dict[str, Any]:
    value: dict[str, Any] = json.loads((WORKFLOWS / f"{name}.json").read_text(encoding="utf-8"))
    return value


BELL = load("bell")
GHZ_NOISY = load("ghz_noisy")
