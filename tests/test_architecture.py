"""The layers a reader is promised hold in the code itself.

``ledger/`` (installed as ``qledger.ledger``) imports nothing above it; the executor's wings
import only the wings below them and the ledger; no import loop exists anywhere; nothing
imports the command line; and the ledger's verifier loads no database driver.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Bottom to top: a module may import its own wing and any wing before it in this list.
WINGS = ["ledger", "api", "ops", "runs", "provenance", "governance", "rpc", "client", "bench", "cli"]


def installed_name(path: Path) -> str:
    """executor/runs/worker.py -> qledger.runs.worker; ledger/store/x.py -> qledger.ledger.store.x."""
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    if parts[0] == "ledger":
        return ".".join(["qledger", *parts])
    return ".".join(["qledger", *parts[1:]])


def wing(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in WINGS else "root"


def modules() -> dict[str, Path]:
    found = {}
    for top in ("ledger", "executor"):
        for path in (REPO / top).rglob("*.py"):
            if "api" in path.relative_to(REPO).parts[1:2]:
                continue
            found[installed_name(path)] = path
    return found


def project_imports(path: Path, known: set[str]) -> set[str]:
    """Every project module ``path`` imports, at the top or inside a function."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in names if name in known}


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found) | {"qledger.api.qledger_pb2", "qledger.api.qledger_pb2_grpc", "qledger.api"}
    return {module: project_imports(path, known) - {module} for module, path in found.items()}


def test_every_module_is_in_a_wing() -> None:
    stray = sorted(m for m in modules() if wing(m) == "root" and m != "qledger")
    assert not stray, f"modules outside every wing: {stray}"


def test_the_ledger_imports_nothing_above_it() -> None:
    offending = {module: sorted(i for i in imports if not i.startswith("qledger.ledger"))
                 for module, imports in graph().items() if module.startswith("qledger.ledger")}
    assert not {m: i for m, i in offending.items() if i}


def test_wings_import_only_wings_below_them() -> None:
    rank = {name: index for index, name in enumerate(WINGS)}
    upward = sorted(f"{module} imports {target}" for module, imports in graph().items()
                    if module != "qledger" for target in imports
                    if wing(target) != "root" and rank[wing(target)] > rank[wing(module)])
    assert not upward, "\n".join(upward)


def test_the_public_package_imports_nothing_eagerly() -> None:
    tree = ast.parse((REPO / "executor" / "__init__.py").read_text(encoding="utf-8"))
    eager = [node for node in tree.body if isinstance(node, ast.ImportFrom) and (node.module or "")
             .startswith("qledger")]
    assert not eager


def test_no_import_loop_between_or_inside_wings() -> None:
    edges = graph()
    try:
        tuple(TopologicalSorter(edges).static_order())
    except CycleError as exc:
        raise AssertionError(f"import loop: {' -> '.join(exc.args[1])}") from None


def in_cli(module: str) -> bool:
    return module == "qledger.cli" or module.startswith("qledger.cli.")  # not qledger.client


def test_nothing_imports_the_command_line() -> None:
    users = sorted(module for module, imports in graph().items() if not in_cli(module)
                   for target in imports if in_cli(target))
    assert not users


def loaded_after(statement: str) -> list[str]:
    probe = f"import sys; {statement}; import json; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return list(json.loads(done.stdout))


def test_the_verifier_loads_no_database_driver_and_nothing_of_the_executor() -> None:
    loaded = loaded_after("import qledger.ledger.verify")
    assert "qledger.ledger.verify" in loaded
    assert not [m for m in loaded if m.split(".")[0] in ("psycopg", "psycopg_pool", "sqlite3")]
    assert not [m for m in loaded if m.startswith("qledger.") and not m.startswith("qledger.ledger")]


def test_import_qledger_and_the_command_load_neither_qiskit_nor_grpc() -> None:
    for statement in ("import qledger", "import qledger.cli"):
        loaded = loaded_after(statement)
        assert not [m for m in loaded if m.split(".")[0] in ("qiskit", "qiskit_aer", "grpc")], statement


def is_package_marker(path: Path) -> bool:
    """An ``__init__.py`` that holds nothing but a docstring: it names a folder, not a module."""
    body = ast.parse(path.read_text(encoding="utf-8")).body
    return path.name == "__init__.py" and all(
        isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in body)


def test_the_readme_layout_names_every_module_once() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    listed: list[tuple[str, str]] = []
    folder = ""
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[1] in ("module", "---"):
            continue
        folder = cells[0].strip("`") or folder
        listed += [(folder.rstrip("/"), name) for name in re.findall(r"`([\w.*]+\.py)`", cells[1])]
    real = {(str(path.parent.relative_to(REPO)), path.name)
            for top in ("ledger", "executor") for path in (REPO / top).rglob("*.py")
            if path.parent.name != "api" and not is_package_marker(path)}
    assert len(listed) == len(set(listed)), "a module is listed twice"
    assert set(listed) - {("executor/api", "qledger_pb2*.py")} == real
