"""Regenerate executor/api from protos/ (``python -m executor.codegen``); CI checks it is current."""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "protos" / "qledger" / "v1" / "qledger.proto"
GENERATED = ("qledger_pb2.py", "qledger_pb2.pyi", "qledger_pb2_grpc.py")


def generate(out_root: Path) -> list[Path]:
    """Write the generated modules under ``out_root/executor/api``; return their paths."""
    (out_root / "executor" / "api").mkdir(parents=True, exist_ok=True)
    # Mapping the proto directory onto executor/api makes the generated gRPC module import
    # ``executor.api.qledger_pb2`` rather than a top-level ``qledger_pb2``.
    code = protoc.main([
        "grpc_tools.protoc", f"-Iexecutor/api={PROTO.parent}", f"--python_out={out_root}",
        f"--pyi_out={out_root}", f"--grpc_python_out={out_root}", "executor/api/qledger.proto",
    ])
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")
    return [out_root / "executor" / "api" / name for name in GENERATED]


if __name__ == "__main__":
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT):
        print(path)
