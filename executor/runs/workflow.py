"""Workflow definitions: versioned, validated, with every result-affecting setting explicit.

Nothing that changes a result is defaulted: seeds, shots, optimisation level and backend
must all be stated, so the recorded definition alone says how to reproduce the run.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from qledger.ledger.canonical import canonical_bytes
from qledger.ledger.errors import DefinitionError, FormatError
from qledger.runs.capacity import too_wide
from qledger.runs.circuit_source import CircuitError, load_circuit
from qledger.runs.dag import PYTHON, DagError, Step, parse_steps, upstream_ids
from qledger.runs.devices import DEVICE_MODELS, SIMULATORS, device_qubits
from qledger.runs.pubs import PRIMITIVES, parse_pubs
from qledger.runs.schema import WORKFLOW_SCHEMA, unstorable_text, violation
from qledger.runs.templates import TEMPLATE_REF, Resolver, TemplateSource
from qledger.runs.variational import parse_optimizer, parse_pauli_sum

SCHEMA_VERSION = 1
TEMPLATES = {"bell": 2, "ghz": None, "qaoa_maxcut": None}  # template -> fixed qubit count
BACKENDS = SIMULATORS | DEVICE_MODELS
# experimental: never touches a restricted backend; such a run goes to the ideal simulator.
PRIORITIES = ("low", "normal", "experimental")
MAX_SHOTS = 1_000_000
PROJECT_NAME = re.compile(r"[a-z0-9_-]{1,64}")
DEFAULT_PROJECT = "default"


class WorkflowFileError(FormatError):
    """A workflow file cannot be read, or is not a JSON or YAML object."""

    hint = "give a workflow definition as a JSON or YAML file"


class WorkflowError(DefinitionError):
    """A definition is invalid; ``field`` names the offending field (a JSON path)."""

    hint = "fix the named field of the workflow definition"


@dataclass(frozen=True)
class WorkflowSpec:
    name: str
    version: int
    template: str
    qubits: int
    shots: int
    seed_transpiler: int
    seed_simulator: int
    optimization_level: int
    backend: str
    noise_seed: int | None
    fallback_backend: str | None
    priority: str
    graph: tuple[tuple[int, int], ...] = ()  # qaoa_maxcut: the MaxCut instance's edges
    graph_dataset: str = ""  # qaoa_maxcut: which dataset holds the graph
    layers: int = 0  # qaoa_maxcut: QAOA depth p
    optimizer: dict[str, Any] | None = None  # qaoa_maxcut: the classical loop's settings
    quality: dict[str, Any] | None = None  # {max_tvd, max_shots}: the band and the shot budget
    steps: tuple[Step, ...] = ()  # the declared DAG
    datasets: dict[str, Any] | None = None  # named input data, recorded by content hash
    project: str | None = None  # whose roles and budget apply; absent means "default"
    source: dict[str, Any] | None = None  # a circuit the user brought (format, source or qpy, parameters)
    max_calibration_age: float | None = None  # seconds; a staler device calibration fails the run
    primitive: str | None = None  # sampler or estimator: execute.pubs run on Aer's V2 primitives
    pubs: tuple[dict[str, Any], ...] | None = None  # the PUBs as given (runs.pubs reads them)
    job: str | None = None  # "single": every Sampler PUB in one Aer job (exact); default chunked
    # A variational eigensolver: the Estimator minimises <observable> over the circuit's parameters.
    observable_dataset: str = ""  # which dataset holds the observable (a Pauli sum)
    observable: tuple[tuple[str, float], ...] = ()
    precision: float | None = None  # the Estimator's target precision (0: exact)
    template_source: TemplateSource | None = None  # a registered template (name@version), resolved

    @property
    def variational(self) -> bool:
        """Whether a classical loop proposes the circuit's parameters (QAOA, VQE)."""
        return self.optimizer is not None

    def sha256(self) -> str:
        return workflow_sha256(self.to_json())

    def to_json(self) -> dict[str, Any]:
        circuit: dict[str, Any] = (dict(self.source) if self.source is not None
                                   else {"template": self.template, "qubits": self.qubits})
        if self.template_source is not None:
            circuit = {"template": self.template_source.ref,
                       **({"parameters": circuit["parameters"]} if "parameters" in circuit else {})}
        extra: dict[str, Any] = {}
        calibration: dict[str, Any] = ({} if self.max_calibration_age is None
                                       else {"max_calibration_age": self.max_calibration_age})
        if self.pubs is not None:
            calibration |= {"primitive": self.primitive, "pubs": list(self.pubs),
                            **({"job": self.job} if self.job is not None else {})}
        if self.observable_dataset:
            calibration |= {"primitive": self.primitive, "observable_dataset": self.observable_dataset,
                            "precision": self.precision}
            extra = {"optimizer": self.optimizer}
        if self.template == "qaoa_maxcut":
            circuit |= {"graph_dataset": self.graph_dataset, "layers": self.layers}
            extra = {"optimizer": self.optimizer}
        if self.project is not None:
            extra["project"] = self.project
        return {"schema_version": SCHEMA_VERSION, "name": self.name, "version": self.version, **extra,
                "quality": self.quality, "datasets": self.datasets,
                "steps": [step.to_json() for step in self.steps],
                "circuit": circuit,
                "transpile": {"optimization_level": self.optimization_level,
                              "seed_transpiler": self.seed_transpiler},
                "execute": {"backend": self.backend, "shots": self.shots,
                            "seed_simulator": self.seed_simulator, "noise_seed": self.noise_seed,
                            "fallback_backend": self.fallback_backend, "priority": self.priority,
                            **calibration}}


def workflow_sha256(definition: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_bytes(definition)).hexdigest()


def _get(obj: Any, path: str, kind: type, *, low: int | None = None, high: int | None = None) -> Any:
    value: Any = obj
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            raise WorkflowError(path, "is required")
        value = value[part]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise WorkflowError(path, f"must be {'an integer' if kind is int else 'a ' + kind.__name__}")
    number = value if isinstance(value, int) else 0
    if (low is not None and number < low) or (high is not None and number > high):
        raise WorkflowError(path, f"must be between {low} and {high}")
    return value


def check_shape(definition: Any) -> None:
    """The definition against the shipped JSON Schema (``schemas/workflow.schema.json``), and its
    text against what entries may hold.  Clients call it on the definition as written, before
    canonical JSON turns ``2048.0`` into ``2048`` unseen."""
    found = unstorable_text(definition, "workflow") or violation(WORKFLOW_SCHEMA, definition, "workflow")
    if found is not None:
        raise WorkflowError(found.field, found.description)


def parse_workflow(definition: Any, backends: frozenset[str] = BACKENDS,
                   templates: Resolver | None = None) -> WorkflowSpec:
    """The definition, checked; ``templates`` resolves registered templates (``name@version``)."""
    check_shape(definition)
    if not isinstance(definition, dict):
        raise WorkflowError("workflow", "must be an object")
    if definition.get("schema_version") != SCHEMA_VERSION:
        raise WorkflowError("schema_version", f"must be {SCHEMA_VERSION}")
    circuit = definition.get("circuit")
    template_source = None
    if isinstance(circuit, dict) and "@" in str(circuit.get("template", "")):
        template_source, circuit = _registered_template(circuit, templates)
    execute = definition.get("execute", {})
    source = None
    primitive, pubs = None, None
    variational = isinstance(execute, dict) and "observable_dataset" in execute
    observable: tuple[tuple[str, float], ...] = ()
    optimizer, precision = None, None
    if isinstance(execute, dict) and ("pubs" in execute or "primitive" in execute):
        primitive, pubs = execute.get("primitive"), execute.get("pubs")
        if primitive not in PRIMITIVES:
            raise WorkflowError("execute.primitive", f"must be one of {list(PRIMITIVES)}")
        if not isinstance(circuit, dict) or "format" not in circuit:
            raise WorkflowError("circuit", "PUBs run a circuit given as source (format: qasm3, qasm2 or qpy)")
        if definition.get("quality") is not None:
            raise WorkflowError("quality", "must be null for PUBs (each binding is its own result)")
        if variational and (primitive != "estimator" or pubs is not None):
            raise WorkflowError("execute.observable_dataset", "a variational loop minimises an "
                                "observable with the estimator primitive, without execute.pubs")
    if isinstance(circuit, dict) and "format" in circuit:
        try:
            loaded = load_circuit(circuit, primitive)
            if variational:
                observable, optimizer, precision = _variational_settings(
                    definition, loaded.parameters, loaded.circuit.num_qubits)
            elif primitive is not None:
                parse_pubs(primitive, pubs, loaded.parameters, loaded.circuit.num_qubits,
                           paired=execute.get("job") == "single")
        except CircuitError as exc:
            raise WorkflowError(exc.field, exc.description) from exc
        template, qubits, source = "", loaded.circuit.num_qubits, dict(circuit)
        width_field = "circuit.qpy" if circuit["format"] == "qpy" else "circuit.source"
    else:
        template = _get(definition, "circuit.template", str)
        if template not in TEMPLATES:
            raise WorkflowError("circuit.template",
                                f"unknown template {template!r}; known: {sorted(TEMPLATES)}")
        qubits = _get(definition, "circuit.qubits", int, low=1)
        if TEMPLATES[template] is not None and qubits != TEMPLATES[template]:
            raise WorkflowError("circuit.qubits", f"template {template} has {TEMPLATES[template]} qubits")
        width_field = "circuit.qubits"
    backend = _get(definition, "execute.backend", str)
    if backend not in backends:
        raise WorkflowError("execute.backend", f"unknown backend {backend!r}; known: {sorted(backends)}")
    for name in (backend, execute.get("fallback_backend")):
        if isinstance(name, str) and name in backends:
            reason = too_wide(name, qubits, device_qubits(name))
            if reason is not None:
                raise WorkflowError(width_field, reason)
    max_age = execute.get("max_calibration_age")
    if max_age is not None:
        if not isinstance(max_age, int | float) or isinstance(max_age, bool) or max_age <= 0:
            raise WorkflowError("execute.max_calibration_age", "must be a positive number of seconds")
        if backend not in DEVICE_MODELS:
            raise WorkflowError("execute.max_calibration_age",
                                f"only device models (fake:...) have calibrations, not {backend}")
    noise_seed = execute.get("noise_seed")
    if noise_seed is not None or backend == "aer_noisy":
        noise_seed = _get(definition, "execute.noise_seed", int, low=0, high=2**31)
    fallback = execute.get("fallback_backend")
    if fallback is not None and (not isinstance(fallback, str) or fallback not in backends):
        raise WorkflowError("execute.fallback_backend", f"must be null or one of {sorted(backends)}")
    priority = _get(definition, "execute.priority", str)
    if priority not in PRIORITIES:
        raise WorkflowError("execute.priority", f"must be one of {list(PRIORITIES)}")
    graph: tuple[tuple[int, int], ...] = ()
    layers = 0
    graph_dataset = ""
    if template == "qaoa_maxcut":
        graph_dataset, graph, layers, optimizer = _qaoa_settings(definition, qubits)
    if "quality" not in definition:
        raise WorkflowError("quality", "is required (null for none)")
    quality = definition["quality"]
    if quality is not None:
        max_tvd = _get(definition, "quality.max_tvd", float)
        if not 0 < max_tvd < 1:
            raise WorkflowError("quality.max_tvd", "must be between 0 and 1")
        shots = definition.get("execute", {}).get("shots", 0)
        _get(definition, "quality.max_shots", int, low=shots if isinstance(shots, int) else 1,
             high=MAX_SHOTS)
        if set(quality) != {"max_tvd", "max_shots"}:
            raise WorkflowError("quality", "has exactly max_tvd and max_shots")
    datasets = definition.get("datasets", "missing")
    if datasets == "missing" or (datasets is not None and not isinstance(datasets, dict)):
        raise WorkflowError("datasets", "is required: an object of named inline datasets, or null")
    try:
        steps = parse_steps(definition.get("steps"), hybrid=optimizer is not None)
        _check_pub_sources(pubs, steps)
        _check_step_datasets(steps, datasets)
    except DagError as exc:
        raise WorkflowError(exc.field, exc.description) from exc
    project = definition.get("project")
    if project is not None and (not isinstance(project, str) or not PROJECT_NAME.fullmatch(project)):
        raise WorkflowError("project", "must be 1-64 characters of a-z, 0-9, '-' and '_'")
    spec = WorkflowSpec(
        project=project,
        name=_get(definition, "name", str), version=_get(definition, "version", int, low=1),
        template=template, qubits=qubits,
        shots=_get(definition, "execute.shots", int, low=1, high=MAX_SHOTS),
        seed_transpiler=_get(definition, "transpile.seed_transpiler", int, low=0, high=2**31),
        seed_simulator=_get(definition, "execute.seed_simulator", int, low=0, high=2**31),
        optimization_level=_get(definition, "transpile.optimization_level", int, low=0, high=3),
        backend=backend, noise_seed=noise_seed, fallback_backend=fallback, priority=priority,
        graph=graph, graph_dataset=graph_dataset, layers=layers, optimizer=optimizer, quality=quality,
        steps=steps,
        datasets=datasets, source=source, max_calibration_age=max_age,
        primitive=primitive, pubs=None if pubs is None else tuple(pubs),
        job=execute.get("job") if pubs is not None else None,
        observable_dataset=str(execute.get("observable_dataset", "")) if variational else "",
        observable=observable, precision=precision, template_source=template_source,
    )
    if spec.to_json() != definition:
        raise WorkflowError("workflow", "has fields this schema version does not define")
    return spec


def _check_step_datasets(steps: tuple[Step, ...], datasets: Any) -> None:
    for i, step in enumerate(steps):
        for name, source in step.inputs:
            if "dataset" in source and source["dataset"] not in (datasets or {}):
                raise WorkflowError(f"steps[{i}].inputs.{name}.dataset",
                                    f"names no dataset ({sorted(datasets or {})})")


def _check_pub_sources(pubs: Any, steps: tuple[Step, ...]) -> None:
    """PUB parameter values a python step gives must come from a python step upstream of the
    execution step."""
    by_id = {step.id: step for step in steps}
    execution = next((step for step in steps if step.kind == "execution"), None)
    for i, pub in enumerate(pubs or []):
        source = pub.get("parameter_values") if isinstance(pub, dict) else None
        if not isinstance(source, dict):
            continue
        producer = by_id.get(str(source.get("step")))
        if producer is None or producer.kind != PYTHON or execution is None:
            raise WorkflowError(f"execute.pubs[{i}].parameter_values.step",
                                f"no python step {source.get('step')!r}")
        if producer.id not in upstream_ids(execution, by_id):
            raise WorkflowError(f"execute.pubs[{i}].parameter_values.step",
                                f"{producer.id!r} must be upstream of the execution step")


def _registered_template(circuit: dict[str, Any], templates: Resolver | None
                         ) -> tuple[TemplateSource, dict[str, Any]]:
    """A circuit member naming a registered template: the template, and the source-form member
    its bytes are (with the definition's parameter values)."""
    ref = circuit["template"]
    extra = sorted(set(circuit) - {"template", "parameters"})
    if extra:
        raise WorkflowError(f"circuit.{extra[0]}", "is not a member of a registered template's circuit "
                            "(members: template, parameters)")
    if not TEMPLATE_REF.fullmatch(ref):
        raise WorkflowError("circuit.template", f"{ref!r} is not name@version")
    found = templates(ref) if templates is not None else None
    if found is None:
        raise WorkflowError("circuit.template", f"no registered template {ref} (qledger templates list)")
    member = found.circuit_member()
    if "parameters" in circuit:
        member["parameters"] = circuit["parameters"]
    return found, member


def _qaoa_settings(definition: dict[str, Any], qubits: int
                   ) -> tuple[str, tuple[tuple[int, int], ...], int, dict[str, Any]]:
    name = _get(definition, "circuit.graph_dataset", str)
    datasets = definition.get("datasets") or {}
    if name not in datasets:
        raise WorkflowError("circuit.graph_dataset", f"no dataset {name!r}")
    edges = _get(datasets, f"{name}.edges", list)
    graph = []
    for i, edge in enumerate(edges):
        if (not isinstance(edge, list) or len(edge) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < qubits for v in edge)
                or edge[0] == edge[1]):
            raise WorkflowError(f"datasets.{name}.edges[{i}]",
                                f"an edge is two distinct vertices in 0..{qubits - 1}")
        graph.append((edge[0], edge[1]))
    if not graph:
        raise WorkflowError(f"datasets.{name}.edges", "needs at least one edge")
    layers = _get(definition, "circuit.layers", int, low=1, high=5)
    try:
        optimizer = parse_optimizer(definition.get("optimizer"), 2 * layers, "gammas, then betas")
    except CircuitError as exc:
        raise WorkflowError(exc.field, exc.description) from exc
    return name, tuple(graph), layers, optimizer


def _variational_settings(definition: dict[str, Any], parameters: tuple[str, ...], qubits: int
                          ) -> tuple[tuple[tuple[str, float], ...], dict[str, Any], float]:
    """The observable (from its dataset), the optimiser and the precision of a variational
    eigensolver over a circuit the user brought."""
    execute = definition["execute"]
    name = execute.get("observable_dataset")
    datasets = definition.get("datasets") or {}
    if not isinstance(name, str) or name not in datasets:
        raise CircuitError("execute.observable_dataset", f"names no dataset ({sorted(datasets)})")
    if not parameters:
        raise CircuitError("circuit.source", "a variational loop needs a circuit with parameters")
    observable = parse_pauli_sum(datasets[name], name, qubits)
    optimizer = parse_optimizer(definition.get("optimizer"), len(parameters),
                                f"one per circuit parameter, {list(parameters)}")
    precision = execute.get("precision")
    if not isinstance(precision, int | float) or isinstance(precision, bool) or not 0 <= precision < 1:
        raise CircuitError("execute.precision", "must be a number in [0, 1) (0: exact expectation values)")
    return observable, optimizer, float(precision)


def project_of(workflow: dict[str, Any] | None) -> str:
    return str((workflow or {}).get("project") or DEFAULT_PROJECT)


def read_workflow(path: Path) -> dict[str, Any]:
    """A workflow definition from JSON, or YAML (``.yaml``/``.yml``, safe loader)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise WorkflowFileError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        value = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except json.JSONDecodeError as exc:
        raise WorkflowFileError(f"{path} is not JSON: {exc.msg} at line {exc.lineno}") from exc
    except yaml.YAMLError as exc:
        raise WorkflowFileError(f"{path} is not YAML: {exc}".splitlines()[0]) from exc
    if not isinstance(value, dict):
        raise WorkflowFileError(f"{path} must hold a JSON object")
    return value
