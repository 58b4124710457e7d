"""The qledger command as an admin or auditor uses it: exit codes, exported logs, proofs."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
from typer.testing import CliRunner

from qledger.cli import app as cli
from qledger.ledger import merkle

runner = CliRunner()


def qledger(*args: str) -> tuple[int, str]:
    result = runner.invoke(cli, list(args))
    return result.exit_code, result.output


@pytest.fixture
def initialised(store_url: str, qledger_home: Path) -> str:
    code, out = qledger("init", "--store", store_url)
    assert code == 0 and out.startswith("initialised"), out
    code, out = qledger("init", "--store", store_url)
    assert code == 0 and out.startswith("already initialised"), out
    assert qledger("keys", "add", "alice", "--store", store_url)[0] == 0
    assert qledger("checkpoint", "--store", store_url)[0] == 0
    assert qledger("keys", "add", "bob", "--purpose", "executor", "--store", store_url)[0] == 0
    return store_url


def test_private_keys_are_0600(initialised: str, qledger_home: Path) -> None:
    files = list((qledger_home / "keys").glob("*.key"))
    assert {f.stem for f in files} == {"root", "checkpointer", "alice", "bob"}
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    (qledger_home / "keys" / "root.key").chmod(0o644)
    code, out = qledger("keys", "add", "carol", "--store", initialised)
    assert code == 2 and "mode 644" in out


def test_verify_store_and_exported_log(initialised: str, tmp_path: Path) -> None:
    code, out = qledger("verify", "--store", initialised, "--jobs", "2")
    # genesis (two keys), the built-in circuit templates (four entries), alice's and bob's keys
    assert code == 0 and out.startswith("OK: 8 entries, 1 checkpoints"), out
    log = tmp_path / "ledger.jsonl"
    assert qledger("export-log", "-o", str(log), "--store", initialised)[0] == 0
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["type"] for line in lines] == ["ledger"] + ["key"] * 4 + ["checkpoint"] + ["entry"] * 8
    # The export carries the store's artifacts beside it, by digest: it verifies as it is.
    code, offline = qledger("verify", "--log", str(log))
    assert code == 0 and offline.split(";")[0] == out.split(";")[0], offline
    assert "3 referenced, 0 hot, 3 archived, 0 missing" in offline
    copies = sorted((tmp_path / "ledger.jsonl.artifacts").rglob("*"))
    first = next(p for p in copies if p.is_file())
    kept_bytes = first.read_bytes()
    first.write_bytes(kept_bytes + b" ")  # an altered copy is tampering...
    assert qledger("verify", "--log", str(log))[0] == 1
    first.unlink()  # ... a missing one is not
    assert qledger("verify", "--log", str(log))[0] == 3
    first.write_bytes(kept_bytes)
    # Drop an entry line from the exported log: a gap, named.
    kept = [line for line in log.read_text().splitlines() if '"position":3,' not in line]
    log.write_text("\n".join(kept) + "\n")
    code, out = qledger("verify", "--log", str(log))
    assert code == 1 and "position 3: missing entry" in out


def test_exported_log_any_entry_byte_changed_fails(initialised: str, tmp_path: Path) -> None:
    log = tmp_path / "ledger.jsonl"
    qledger("export-log", "-o", str(log), "--store", initialised)
    text = log.read_text()
    start = text.index('"type":"entry"')
    for offset in range(start, len(text), 97):
        if text[offset] in '\n"{}[],:':
            continue
        tampered = tmp_path / "t.jsonl"
        replacement = "A" if text[offset] != "A" else "B"
        tampered.write_text(text[:offset] + replacement + text[offset + 1:])
        code, out = qledger("verify", "--log", str(tampered))
        assert code in (1, 2) and out.startswith("qledger: "), f"change at {offset} went unnoticed"


def test_cannot_run_exits_2_with_one_line(qledger_home: Path, tmp_path: Path) -> None:
    for args in (["verify", "--store", "mysql://x/y"],
                 ["verify", "--store", "postgresql://nobody@127.0.0.1:1/none"],
                 ["verify", "--store", f"sqlite:///{tmp_path}/missing-dir/x.db"],
                 ["verify", "--log", str(tmp_path / "absent.jsonl")]):
        code, out = qledger(*args)
        assert code == 2, (args, out)
        assert out.startswith("qledger: ") and out.count("\n") == 1, out


def test_uninitialised_store_says_run_init(qledger_home: Path, tmp_path: Path) -> None:
    code, out = qledger("checkpoint", "--store", f"sqlite:///{tmp_path}/new.db")
    assert code == 2 and "qledger init" in out


def test_proofs_printed_verify(initialised: str) -> None:
    code, out = qledger("proof", "inclusion", "2", "--size", "4", "--store", initialised)
    proof = json.loads(out)
    assert merkle.verify_inclusion(proof["leaf_index"], proof["tree_size"],
                                   bytes.fromhex(proof["leaf_hash"]),
                                   [bytes.fromhex(h) for h in proof["inclusion_path"]],
                                   bytes.fromhex(proof["root_hash"]))
    code, out = qledger("proof", "consistency", "3", "4", "--store", initialised)
    c = json.loads(out)
    assert merkle.verify_consistency(3, 4, bytes.fromhex(c["first_root"]),
                                     bytes.fromhex(c["second_root"]),
                                     [bytes.fromhex(h) for h in c["consistency_path"]])
    code, out = qledger("checkpoint", "--store", initialised)
    assert code == 0 and json.loads(out)["tree_size"] == 8
    assert qledger("proof", "inclusion", "9", "--store", initialised)[0] == 2
    assert qledger("proof", "consistency", "4", "3", "--store", initialised)[0] == 2


def test_console_script_runs(initialised: str, qledger_home: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "qledger.cli", "verify", "--store", initialised],
                          capture_output=True, text=True, env={"QLEDGER_HOME": str(qledger_home),
                                                              "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("OK:")


@pytest.mark.parametrize("command", [["verify"], ["checkpoint"], ["export-log", "-o", "out.jsonl"],
                                     ["proof", "inclusion", "1"], ["keys", "list"], ["templates", "list"]])
def test_a_read_command_on_a_missing_ledger_says_so_and_creates_nothing(tmp_path: Path, qledger_home: Path,
                                                                      command: list[str]) -> None:
    store = tmp_path / "qledger.db"
    done = subprocess.run([sys.executable, "-m", "qledger.cli", *command, "--store", f"sqlite:///{store}"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env={**os.environ, "QLEDGER_HOME": str(qledger_home)})
    assert done.returncode == 2, done
    assert done.stderr == f"qledger: no ledger at {store} (run `qledger init` first)\n"
    assert not store.exists() and not (tmp_path / "out.jsonl").exists()


def test_a_read_command_on_an_uninitialised_postgres_schema_says_so(pg_store_url: str) -> None:
    code, out = qledger("verify", "--store", pg_store_url)
    assert code == 2 and out.strip() == f"qledger: no ledger at {pg_store_url} (run `qledger init` first)"


def test_each_init_chooses_a_unique_origin_unless_told(tmp_path: Path, qledger_home: Path) -> None:
    origins = []
    for name in ("a", "b"):
        code, out = qledger("init", "--store", f"sqlite:///{tmp_path / name}.db")
        assert code == 0, out
        origins.append(out.split("(origin ", 1)[1].split(",", 1)[0])
    assert origins[0] != origins[1] and all(o.startswith("qledger.local/") for o in origins)
    chosen = f"sqlite:///{tmp_path / 'c'}.db"
    code, out = qledger("init", "--store", chosen, "--origin", "ledger.example.com/prod")
    assert code == 0 and "(origin ledger.example.com/prod," in out
    # Chosen once: asking for another origin later is refused, not silently ignored.
    code, out = qledger("init", "--store", chosen, "--origin", "ledger.example.com/other")
    assert code == 2 and "initialised with origin 'ledger.example.com/prod'" in out
    assert qledger("init", "--store", chosen)[0] == 0  # re-running without --origin is fine
    code, out = qledger("init", "--store", f"sqlite:///{tmp_path / 'd'}.db", "--origin", "two words")
    assert code == 2 and "no spaces" in out and not (tmp_path / "d.db").exists()


def test_a_postgres_store_that_cannot_be_opened_says_why(pg_server_url: str) -> None:
    parsed = urlparse(pg_server_url)
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    server, database = f"{parsed.hostname}:{parsed.port}", parsed.path.lstrip("/")
    cases = {
        f"postgresql://{parsed.username}@{server}/qledger_no_such_db":
            'database "qledger_no_such_db" does not exist',
        f"postgresql://qledger_no_such_role@{server}/{database}":
            'role "qledger_no_such_role" does not exist',
        f"postgresql://postgres@127.0.0.1:{free}/test": "Connection refused",
    }
    for url, cause in cases.items():
        code, out = qledger("verify", "--store", f"{url}?connect_timeout=2")
        assert code == 2 and cause in out and out.count("\n") == 1, (url, out)
        assert "couldn't get a connection" not in out
