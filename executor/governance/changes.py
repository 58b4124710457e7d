"""Changing governance: each function appends one entry signed by the acting principal, after
checking that principal may make the change."""

from __future__ import annotations

from typing import Any, cast
from uuid import UUID

from qledger.governance.policy import ALL_PROJECTS, ROLES, Governance, GovernanceError, Policy
from qledger.ledger.app import LedgerApp
from qledger.ledger.errors import QledgerError
from qledger.ledger.keys import SigningKey
from qledger.ledger.verify import check_stream
from qledger.provenance.lineage_index import RunFilter, find_runs
from qledger.provenance.projections import projection_runner
from qledger.provenance.report import compare, run_facts
from qledger.runs.templates import resolver
from qledger.runs.workflow import BACKENDS, parse_workflow, project_of, workflow_sha256

REPRODUCED = ("reproduced exactly", "within tolerance")


def load(app: LedgerApp) -> Governance | None:
    return cast(Governance | None, app.find(Governance.create_id(app.require_origin())))


def policy(app: LedgerApp) -> Policy:
    return Policy.of(load(app))


def _for_change(app: LedgerApp, actor: SigningKey, needs: str, project: str) -> Governance:
    app.add_signer(actor)
    governance = load(app)
    if needs not in Policy.of(governance).roles_of(actor.principal, project):
        raise GovernanceError(f"{actor.principal} is not {needs} of project {project!r}")
    if governance is None:
        governance = Governance(principal=actor.principal, origin=app.require_origin())
    return governance


def grant_role(app: LedgerApp, admin: SigningKey, subject: str, role: str, project: str,
               revoke: bool = False) -> None:
    if role not in ROLES:
        raise GovernanceError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
    governance = _for_change(app, admin, "admin", project)
    if revoke:
        governance.revoke_role(principal=admin.principal, subject=subject, role=role, project=project)
    else:
        governance.grant_role(principal=admin.principal, subject=subject, role=role, project=project)
    app.save(governance)


def set_quota(app: LedgerApp, admin: SigningKey, project: str, shots: int | None, runs: int | None,
              executor_seconds: float | None, warn_at: float) -> None:
    if not 0 < warn_at <= 1:
        raise GovernanceError("--warn-at is a fraction of the budget, in (0, 1]")
    if any(v is not None and v < 0 for v in (shots, runs, executor_seconds)):
        raise GovernanceError("budgets are not negative")
    governance = _for_change(app, admin, "admin", project)
    governance.set_quota(principal=admin.principal, project=project, shots=shots, runs=runs,
                         executor_seconds=executor_seconds, warn_at=warn_at)
    app.save(governance)


def restrict_backend(app: LedgerApp, admin: SigningKey, backend: str, restricted: bool = True) -> None:
    governance = _for_change(app, admin, "admin", ALL_PROJECTS)
    governance.restrict_backend(principal=admin.principal, backend=backend, restricted=restricted)
    app.save(governance)


def set_canary(app: LedgerApp, admin: SigningKey, workflow: str, candidate: str | None,
               fraction: float, optimization_level: int | None = None) -> None:
    if not 0 <= fraction <= 1:
        raise GovernanceError("the canary fraction is in [0, 1]")
    if optimization_level is not None and not 0 <= optimization_level <= 3:
        raise GovernanceError("a candidate optimisation level is 0..3")
    governance = _for_change(app, admin, "admin", ALL_PROJECTS)
    governance.set_canary(principal=admin.principal, workflow=workflow, candidate_backend=candidate,
                          fraction=fraction, candidate_optimization_level=optimization_level)
    app.save(governance)


def approve(app: LedgerApp, approver: SigningKey, definition: dict[str, Any], author: str,
            rationale: str) -> str:
    """Approve this exact workflow definition; returns its sha256.

    Refused for the definition's own author, without a rationale, and unless the template's
    last run (same name and version) completed and a rerun of it reproduced it.
    """
    # The backend may be one this machine does not run (real hardware): any name is valid here.
    named = definition.get("execute", {}) if isinstance(definition.get("execute"), dict) else {}
    spec = parse_workflow(definition, BACKENDS | {str(named.get(k)) for k in ("backend", "fallback_backend")},
                          resolver(app))
    project = project_of(definition)
    if approver.principal == author:
        raise GovernanceError(f"{author} may not approve their own workflow (self-approval)")
    if not rationale.strip():
        raise GovernanceError("an approval needs a rationale")
    governance = _for_change(app, approver, "approver", project)
    evidence = promotion_evidence(app, spec.name, spec.version)
    sha = workflow_sha256(definition)
    governance.approve(principal=approver.principal, workflow_sha256=sha, name=spec.name,
                       version=spec.version, project=project, author=author,
                       rationale=f"{rationale.strip()} [evidence: {evidence}]")
    app.save(governance)
    return sha


def approve_template(app: LedgerApp, approver: SigningKey, ref: str, project: str, rationale: str) -> str:
    """Approve a registered template version, by its source digest, for restricted backends in
    ``project``; returns the digest.  Refused for its own author and without a rationale."""
    found = resolver(app)(ref)
    if found is None:
        raise GovernanceError(f"no registered template {ref} (qledger templates list)")
    if approver.principal == found.author:
        raise GovernanceError(f"{found.author} may not approve their own template (self-approval)")
    if not rationale.strip():
        raise GovernanceError("an approval needs a rationale")
    governance = _for_change(app, approver, "approver", project)
    governance.approve_template(principal=approver.principal, template=ref, source_sha256=found.sha256,
                                project=project, author=found.author, rationale=rationale.strip())
    app.save(governance)
    return found.sha256


def promotion_evidence(app: LedgerApp, name: str, version: int) -> str:
    """Why the template may be promoted: its last run completed and its rerun reproduced it."""
    runs = projection_runner(app).read_current(
        "lineage", lambda db: find_runs(db, RunFilter(workflow=name, limit=1000)))
    source = app.source()
    status = {r["run_id"]: r["status"] for r in runs}
    facts: dict[str, dict[str, Any]] = {}

    def facts_of(run_id: str) -> dict[str, Any]:
        """A run's recorded facts, read once and only when needed (the newest runs usually decide)."""
        if run_id not in facts:
            rows = source.stream_entries(UUID(run_id), 0)
            try:
                facts[run_id] = run_facts([r.state or b"" for r in rows])
            except QledgerError as exc:
                raise GovernanceError(f"run {run_id} does not verify ({exc}): not promotable "
                                      "(run `qledger verify`)") from exc
        return facts[run_id]

    for rerun in runs:  # newest first: the latest reproduction check of this template decides
        if rerun["status"] != "completed":
            continue
        original = str(facts_of(rerun["run_id"]).get("rerun_of"))
        if (original not in status or status[original] != "completed"
                or facts_of(original)["workflow"].get("version") != version):
            continue
        verdict = compare(facts[original], facts[rerun["run_id"]])["verdict"]
        if verdict in REPRODUCED:
            checked = verify_run(app, original) + verify_run(app, rerun["run_id"])
            return (f"run {original} {verdict} by rerun {rerun['run_id']}; their {checked} entries "
                    "verified")
        raise GovernanceError(f"the last rerun of {name} v{version} {verdict}: not promotable")
    raise GovernanceError(f"{name} v{version} has no completed run reproduced by a rerun: run it on a "
                          "simulator and rerun it (`qledger report RUN --rerun`) first")


def verify_run(app: LedgerApp, run_id: str) -> int:
    """Check one run's entries as an auditor would: each hashes to its stored leaf, is signed by
    a key registered to its principal and valid at its position, and is included in the tree
    (an RFC 9162 proof against the current root).  The number of entries; GovernanceError if not."""
    source = app.source()
    rows = source.stream_entries(UUID(run_id), 0)
    finding = check_stream(rows, source.key_rows(), app.origin, app.inclusion_proof)
    if finding is not None:
        raise GovernanceError(f"run {run_id} does not verify at position {finding.position} "
                              f"({finding.kind.value}): not promotable (run `qledger verify`)")
    return len(rows)
