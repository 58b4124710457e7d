"""The built wheel installs under one namespace of ours and breaks nobody else's.

A PyPI distribution called ``executor`` owns a top-level package ``executor``; a wheel that also
installed a top-level ``executor`` would be merged into it by pip, silently, and break both.
"""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NEIGHBOUR = "executor==23.2"  # the PyPI distribution that owns a top-level ``executor``


def run(*args: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=600, cwd=cwd)
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done.stdout


def test_wheel_installs_beside_a_package_that_owns_executor(tmp_path: Path) -> None:
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", tmp_path / "dist", REPO)
    wheel = next((tmp_path / "dist").glob("qledger_provenance-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        tops = {name.split("/")[0] for name in archive.namelist()}
    name, version = wheel.name.split("-")[:2]
    assert tops == {"qledger", f"{name}-{version}.dist-info"}

    venv.create(tmp_path / "venv", with_pip=True)
    python = tmp_path / "venv" / "bin" / "python"
    run(python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", NEIGHBOUR)
    # Ours without its dependencies: only the two packages' own files matter here.
    run(python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps", wheel)
    probe = ("import executor, qledger, qledger.ledger; from executor import execute; "
             "print(executor.__file__); print(qledger.__file__); print(qledger.__version__)")
    # Run away from the checkout, whose own executor/ folder would shadow the installed packages.
    their_file, our_file, installed = run(python, "-c", probe, cwd=tmp_path).split()
    assert Path(their_file).parent.name == "executor" and Path(our_file).parent.name == "qledger"
    assert installed == version
    # Uninstalling ours leaves theirs whole.
    run(python, "-m", "pip", "uninstall", "--yes", "--quiet", "qledger-provenance")
    run(python, "-c", "from executor import execute", cwd=tmp_path)
