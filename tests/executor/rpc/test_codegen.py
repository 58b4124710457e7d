"""The generated gRPC code is exactly what protos/ produces: CI fails when it is stale."""

from __future__ import annotations

from pathlib import Path

from qledger.rpc.codegen import GENERATED, ROOT, generate


def test_generated_code_is_current(tmp_path: Path) -> None:
    fresh = generate(tmp_path)
    assert [p.name for p in fresh] == list(GENERATED)
    for path in fresh:
        committed = ROOT / "executor" / "api" / path.name
        assert committed.read_bytes() == path.read_bytes(), (
            f"{committed} is stale: run `python -m qledger.rpc.codegen` and commit the result")
