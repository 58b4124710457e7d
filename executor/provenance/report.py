"""Reproducibility reports: one run's recorded environment, and a comparison with another run.

Built only from ledger entries.  Two runs of the same workflow reproduce *exactly* when the
transpiled circuits and the counts are identical (seeds make this expected); otherwise the
counts are compared as distributions (Hellinger fidelity, total variation distance) against
a band from shot noise, and the verdict names what differs: data, circuit, settings,
environment or backend.
"""

from __future__ import annotations

import json
import math
from typing import Any

from qiskit.quantum_info import hellinger_fidelity

from qledger.ledger import dsse
from qledger.ledger.content import EntryContent

# Three standard deviations of the TVD between two samples of one distribution.
BAND_SIGMAS = 3.0


def run_facts(envelopes: list[bytes]) -> dict[str, Any]:
    """What a run's entries record, by step id, plus its workflow and status."""
    contents = [EntryContent.from_bytes(dsse.parse(e).payload) for e in envelopes]
    records = {c.payload["step"]: c.payload["record"] for c in contents
               if "step" in c.payload and "record" in c.payload}  # a Failed entry names a step too
    submitted = contents[0].payload
    return {"run_id": contents[0].stream_id, "workflow": submitted["workflow"],
            "workflow_sha256": submitted["workflow_sha256"], "records": records,
            "rerun_of": submitted.get("rerun_of"),
            "status": contents[-1].event_type.rsplit(".", 1)[-1], "outcome": _outcome(contents[-1])}


def _outcome(last: EntryContent) -> dict[str, Any] | None:
    """Why a run ended other than completed: a Failed entry's class, step and message, or who
    cancelled it and why."""
    kind = last.event_type.rsplit(".", 1)[-1]
    keep = {"Failed": ("error_class", "kind", "step", "message"),
            "Cancelled": ("requested_by", "reason")}.get(kind)
    return None if keep is None else {name: last.payload.get(name) for name in keep}


def _environment(facts: dict[str, Any]) -> dict[str, Any]:
    records = facts["records"]
    execution, transpilation = records.get("execution", {}), records.get("transpilation", {})
    return {
        "sdk": execution.get("environment"),
        "seeds": {"seed_transpiler": transpilation.get("seed_transpiler"),
                  "seed_simulator": execution.get("seed_simulator")},
        "transpiler": {k: transpilation.get(k) for k in ("optimization_level", "target", "depth",
                                                         "gate_counts")},
        "backend": execution.get("backend"),
        "calibration": execution.get("calibration"),
        "shots": execution.get("shots"),
    }


def shot_noise_band(a: dict[str, int], b: dict[str, int]) -> float:
    """Expected TVD between two independent samples of one distribution, times BAND_SIGMAS.

    E|p̂_a - p̂_b| ≈ sqrt(2/π)·sqrt(p(1-p)(1/Na + 1/Nb)) per outcome, with p pooled.
    """
    na, nb = sum(a.values()), sum(b.values())
    total = 0.0
    for key in set(a) | set(b):
        p = (a.get(key, 0) + b.get(key, 0)) / (na + nb)
        total += math.sqrt(2 / math.pi) * math.sqrt(p * (1 - p) * (1 / na + 1 / nb))
    return BAND_SIGMAS * total / 2


def _tvd(a: dict[str, int], b: dict[str, int]) -> float:
    na, nb = sum(a.values()), sum(b.values())
    return 0.5 * sum(abs(a.get(k, 0) / na - b.get(k, 0) / nb) for k in set(a) | set(b))


def _unrelated(x: dict[str, Any], y: dict[str, Any]) -> bool:
    """Runs of two different workflows (by name): a comparison of them measures nothing."""
    return bool(x["workflow"].get("name") != y["workflow"].get("name"))


def _verdict(x: dict[str, Any], y: dict[str, Any], measured: str) -> str:
    if _unrelated(x, y):
        return (f"different workflows ({x['workflow'].get('name')!r} and {y['workflow'].get('name')!r}): "
                "not a reproduction of one another")
    return measured


def _code(records: dict[str, Any]) -> dict[str, Any]:
    """The installed code each python step ran: distribution, version, module source digest."""
    return {step: (r.get("distribution"), r.get("module_sha256")) for step, r in records.items()
            if isinstance(r, dict) and r.get("kind") == "python"}


def _changes(x: dict[str, Any], y: dict[str, Any]) -> list[str]:
    rx, ry = x["records"], y["records"]
    wx, wy = x["workflow"], y["workflow"]
    changed = ["workflow"] if _unrelated(x, y) else []  # said first: it overrides everything below
    if rx.get("data_preparation", {}).get("datasets") != ry.get("data_preparation", {}).get("datasets"):
        changed.append("data")
    sx, sy = rx.get("circuit_synthesis", {}), ry.get("circuit_synthesis", {})
    if any(sx.get(k) != sy.get(k) for k in ("qasm3_sha256", "circuit_source")):
        changed.append("circuit")
    settings = ("transpile", "execute", "quality", "optimizer")
    if any({k: v for k, v in wx.get(s, {}).items() if k not in ("backend", "noise_seed")}
           != {k: v for k, v in wy.get(s, {}).items() if k not in ("backend", "noise_seed")}
           for s in settings if isinstance(wx.get(s), dict) or isinstance(wy.get(s), dict)):
        changed.append("settings")
    if _code(rx) != _code(ry):
        changed.append("code")
    if rx.get("execution", {}).get("environment") != ry.get("execution", {}).get("environment"):
        changed.append("environment")
    if rx.get("execution", {}).get("backend") != ry.get("execution", {}).get("backend"):
        changed.append("backend")
    if ((rx.get("execution", {}).get("calibration") or {}).get("sha256")
            != (ry.get("execution", {}).get("calibration") or {}).get("sha256")):
        changed.append("calibration")
    return changed


def compare(x: dict[str, Any], y: dict[str, Any]) -> dict[str, Any]:
    cx = x["records"].get("execution", {}).get("counts", {})
    cy = y["records"].get("execution", {}).get("counts", {})
    if not cx or not cy:
        return _compare_results(x, y)
    same_circuit = (x["records"].get("transpilation", {}).get("qasm3_sha256")
                    == y["records"].get("transpilation", {}).get("qasm3_sha256"))
    tvd, band = _tvd(cx, cy), shot_noise_band(cx, cy)
    changed = _changes(x, y)
    if same_circuit and cx == cy:
        verdict = "reproduced exactly"
    elif tvd <= band:
        verdict = "within tolerance"
    else:
        verdict = "diverged"
    return {"runs": [x["run_id"], y["run_id"]], "same_workflow": x["workflow_sha256"] == y["workflow_sha256"],
            "identical_transpiled_circuit": same_circuit, "identical_counts": cx == cy,
            "hellinger_fidelity": round(hellinger_fidelity(cx, cy), 6), "total_variation_distance":
            round(tvd, 6), "shot_noise_band": round(band, 6), "verdict": _verdict(x, y, verdict),
            "changed": changed,
            "baseline": [x["records"].get("report"), y["records"].get("report")]}


def _compare_results(x: dict[str, Any], y: dict[str, Any]) -> dict[str, Any]:
    """Runs of PUBs, variational eigensolvers (or runs that never counted): the same results,
    digest for digest or energy for energy, or not."""
    def result_of(records: dict[str, Any]) -> Any:
        digests = records.get("post_processing", {}).get("result_digests")
        return digests if digests is not None else records.get("execution", {}).get("energy")

    rx, ry = result_of(x["records"]), result_of(y["records"])
    same_circuit = (x["records"].get("transpilation", {}).get("qasm3_sha256")
                    == y["records"].get("transpilation", {}).get("qasm3_sha256"))
    identical = rx is not None and rx == ry
    return {"runs": [x["run_id"], y["run_id"]], "same_workflow": x["workflow_sha256"] == y["workflow_sha256"],
            "identical_transpiled_circuit": same_circuit, "identical_results": identical,
            "verdict": _verdict(x, y, "reproduced exactly" if identical and same_circuit else "diverged"),
            "changed": _changes(x, y), "baseline": [x["records"].get("report"), y["records"].get("report")]}


def report(x: dict[str, Any], y: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"run_id": x["run_id"], "status": x["status"], "outcome": x.get("outcome"),
                           "environment": _environment(x),
                           "result": x["records"].get("report"),
                           "counts": {x["run_id"]: x["records"].get("execution", {}).get("counts", {})}}
    if y is not None:
        out["comparison"] = compare(x, y)
        out["counts"][y["run_id"]] = y["records"].get("execution", {}).get("counts", {})
    return out


def to_markdown(data: dict[str, Any]) -> str:
    env = data["environment"]
    result = json.dumps(data["result"], indent=2, sort_keys=True)
    outcome = data.get("outcome")
    said = "" if not outcome else (
        f" ({outcome['kind']} {outcome['error_class']} in {outcome['step']}: {outcome['message']})"
        if "error_class" in outcome else f" (by {outcome['requested_by']}: {outcome['reason']})")
    lines = [f"# Reproducibility report: run {data['run_id']}", "", f"Status: {data['status']}{said}", "",
             "## Recorded environment", "",
             f"- SDK: {json.dumps(env['sdk'], sort_keys=True)}",
             f"- Seeds: {json.dumps(env['seeds'], sort_keys=True)}",
             f"- Transpiler: {json.dumps(env['transpiler'], sort_keys=True)}",
             f"- Backend: {json.dumps(env['backend'], sort_keys=True)}", f"- Shots: {env['shots']}", "",
             "## Result against the classical baseline", "", f"```json\n{result}\n```"]
    if "comparison" in data:
        c = data["comparison"]
        lines += ["", f"## Comparison with run {c['runs'][1]}", "", f"**Verdict: {c['verdict']}**"
                  + (f" (changed: {', '.join(c['changed'])})" if c["changed"] else ""), "",
                  "| measure | value |", "|---|---|"]
        for key in ("same_workflow", "identical_transpiled_circuit", "identical_counts", "identical_results",
                    "hellinger_fidelity", "total_variation_distance", "shot_noise_band"):
            if key in c:
                lines.append(f"| {key.replace('_', ' ')} | {c[key]} |")
    return "\n".join(lines) + "\n"
