"""``qledger`` governance commands: roles, quotas, restricted backends, approvals, canaries,
and the access/budget events the executors recorded."""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path
from typing import Annotated, Any

import typer

from qledger.governance.policy import AUDIT_KINDS
from qledger.ledger.cli_common import StoreOption, fail, open_app, print_json, reported_errors

roles_app = typer.Typer(no_args_is_help=True, help="Grant and revoke roles (admin).")
quota_app = typer.Typer(no_args_is_help=True, help="Per-project budgets (admin).")
backends_app = typer.Typer(no_args_is_help=True, help="Mark backends restricted (admin).")
canary_app = typer.Typer(no_args_is_help=True, help="Route a fraction of a workflow's runs (admin).")
PAGE = 1000
AsOption = Annotated[str, typer.Option("--as", help="Whose key signs the change")]
ProjectOption = Annotated[str, typer.Option(help="Project, or * for all")]


def register(app: typer.Typer) -> None:
    app.add_typer(roles_app, name="roles")
    app.add_typer(quota_app, name="quota")
    app.add_typer(backends_app, name="backends")
    app.add_typer(canary_app, name="canary")
    app.command("approve")(approve)
    app.command("audit-events")(audit_events)


def _actor(principal: str) -> Any:
    from qledger.ledger.keys import KeyStore

    return KeyStore.default().load(principal)


@roles_app.command("grant")
def roles_grant(subject: str, role: str, project: ProjectOption = "default", store: StoreOption = None,
                actor: AsOption = "root") -> None:
    """Give SUBJECT the ROLE (submitter, approver, auditor, admin) in a project."""
    from qledger.governance.changes import grant_role

    with reported_errors():
        grant_role(open_app(store), _actor(actor), subject, role, project)
    typer.echo(f"granted {role} in {project} to {subject}")


@roles_app.command("revoke")
def roles_revoke(subject: str, role: str, project: ProjectOption = "default", store: StoreOption = None,
                 actor: AsOption = "root") -> None:
    from qledger.governance.changes import grant_role

    with reported_errors():
        grant_role(open_app(store), _actor(actor), subject, role, project, revoke=True)
    typer.echo(f"revoked {role} in {project} from {subject}")


@roles_app.command("list")
def roles_list(store: StoreOption = None) -> None:
    from qledger.governance.changes import policy

    with reported_errors():
        print_json(policy(open_app(store)).roles)


@quota_app.command("set")
def quota_set(project: str, store: StoreOption = None, actor: AsOption = "root",
              shots: Annotated[int | None, typer.Option(min=0, help="Shots, reserved at submission")] = None,
              runs: Annotated[int | None, typer.Option(min=0)] = None,
              executor_seconds: Annotated[float | None, typer.Option(min=0)] = None,
              warn_at: Annotated[float, typer.Option(help="Record a warning at this fraction")]
              = 0.8) -> None:
    """Set PROJECT's budget; a run that would exceed it is refused before it starts."""
    from qledger.governance.changes import set_quota

    with reported_errors():
        set_quota(open_app(store), _actor(actor), project, shots, runs, executor_seconds, warn_at)
    typer.echo(f"quota of {project}: shots {shots}, runs {runs}, executor seconds {executor_seconds}, "
               f"warn at {warn_at:.0%}")


@quota_app.command("show")
def quota_show(project: str, store: StoreOption = None) -> None:
    """PROJECT's budget and what it has used: runs, shots (taken by ended runs, reserved by the
    others), executor seconds."""
    from qledger.governance.changes import policy
    from qledger.provenance.projections import projection_runner
    from qledger.provenance.usage import project_usage

    with reported_errors():
        app = open_app(store)
        used = projection_runner(app).read_current("usage", lambda db: project_usage(db, project))
        print_json({"project": project, "quota": policy(app).quotas.get(project), "used": used})


@backends_app.command("restrict")
def backends_restrict(backend: str, store: StoreOption = None, actor: AsOption = "root",
                      lift: Annotated[bool, typer.Option("--lift", help="Unrestrict instead")]
                      = False) -> None:
    """Runs on BACKEND then need an approved workflow definition."""
    from qledger.governance.changes import restrict_backend

    with reported_errors():
        restrict_backend(open_app(store), _actor(actor), backend, not lift)
    typer.echo(f"{backend} {'is no longer' if lift else 'is'} restricted")


@canary_app.command("set")
def canary_set(workflow: str, store: StoreOption = None, actor: AsOption = "root",
               candidate: Annotated[str | None, typer.Option(help="Candidate backend; omit to stop")]
               = None,
               fraction: Annotated[float, typer.Option(help="Share of runs, chosen by run id")]
               = 0.1,
               optimization_level: Annotated[int | None, typer.Option(
                   min=0, max=3, help="Circuit variant: candidate transpiler optimisation level")]
               = None) -> None:
    """Route FRACTION of WORKFLOW's runs (by name), chosen deterministically by run id, to a
    candidate backend and/or circuit variant; each routed run records it.  Neither: stop."""
    from qledger.governance.changes import set_canary

    with reported_errors():
        set_canary(open_app(store), _actor(actor), workflow, candidate, fraction, optimization_level)
    stopped = candidate is None and optimization_level is None
    typer.echo(f"canary for {workflow}: " + ("off" if stopped else
               f"backend {candidate or 'unchanged'}, optimisation level "
               f"{'unchanged' if optimization_level is None else optimization_level}, at {fraction:.0%}"))


def approve(workflow: Path, author: Annotated[str, typer.Option(help="Who wrote this definition")],
            rationale: Annotated[str, typer.Option(help="Why it may run on restricted backends")],
            store: StoreOption = None, actor: AsOption = "approver") -> None:
    """Approve this exact workflow definition (JSON/YAML) for restricted backends.  Refused for
    its author, and unless the template's last run was reproduced by a rerun."""
    from qledger.governance.changes import approve as approve_definition
    from qledger.runs.workflow import read_workflow

    with reported_errors():
        sha = approve_definition(open_app(store), _actor(actor), read_workflow(workflow), author, rationale)
    typer.echo(f"approved {sha} by {actor}")


def audit_events(store: StoreOption = None,
                 kind: Annotated[str | None, typer.Option(help=", ".join(AUDIT_KINDS))] = None,
                 limit: Annotated[int, typer.Option(min=1, max=100000)] = 100) -> None:
    """The access, rate and budget events executors recorded (who, what, when): the last LIMIT,
    newest last.  Refusals repeated within a window are one summary event with a count."""
    from eventsourcing.utils import get_topic

    from qledger.governance.policy import AuditEvent, AuditSummary
    from qledger.ledger import dsse
    from qledger.ledger.content import EntryContent

    if kind is not None and kind not in AUDIT_KINDS:
        raise fail(f"unknown kind {kind!r}; kinds are {', '.join(AUDIT_KINDS)}")
    summary = get_topic(AuditSummary.Summarised)  # type: ignore[attr-defined]
    topics = [get_topic(AuditEvent.Observed), summary]  # type: ignore[attr-defined]
    events: deque[dict[str, Any]] = deque(maxlen=limit)  # memory stays at LIMIT events
    with reported_errors():
        app = open_app(store)
        start: int | None = None
        while rows := app.recorder.select_notifications(start=start, limit=PAGE, topics=topics):
            for row in rows:
                content = EntryContent.from_bytes(dsse.parse(row.state).payload)
                if kind is None or content.payload["kind"] == kind:
                    events.append({"at": content.timestamp, "recorded_by": content.principal,
                                   "summary": row.topic == summary, **content.payload})
            start = rows[-1].id + 1
    typer.echo(json.dumps(list(events), indent=2, sort_keys=True))
