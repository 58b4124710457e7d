"""Regenerate executor/api (installed as ``qledger.api``) from protos/ (``python -m qledger.rpc.codegen``);
CI checks it is current."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]  # the source checkout
PROTO = ROOT / "protos" / "qledger" / "v1" / "qledger.proto"
GENERATED = ("qledger_pb2.py", "qledger_pb2.pyi", "qledger_pb2_grpc.py")


def generate(out_root: Path) -> list[Path]:
    """Write the generated modules under ``out_root/qledger/api``; return their paths."""
    (out_root / "qledger" / "api").mkdir(parents=True, exist_ok=True)
    # Mapping the proto directory onto qledger/api makes the generated gRPC module import
    # ``qledger.api.qledger_pb2`` (the installed name of executor/api), not a top-level module.
    code = protoc.main([
        "grpc_tools.protoc", f"-Iqledger/api={PROTO.parent}", f"--python_out={out_root}",
        f"--pyi_out={out_root}", f"--grpc_python_out={out_root}", "qledger/api/qledger.proto",
    ])
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")
    return [out_root / "qledger" / "api" / name for name in GENERATED]


if __name__ == "__main__":
    if len(sys.argv) > 1:
        for path in generate(Path(sys.argv[1])):
            print(path)
    else:
        with tempfile.TemporaryDirectory() as scratch:
            for path in generate(Path(scratch)):
                target = ROOT / "executor" / "api" / path.name
                shutil.copyfile(path, target)
                print(target)
