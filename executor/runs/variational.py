"""The classical half of a variational loop: the optimiser settings a workflow states, the loop
that minimises an objective under an evaluation limit, and the exact baseline of an observable.

Every optimiser is deterministic given what the definition states: the initial point, the
evaluation limit and, for SPSA, the seed of its perturbations and its two gains.  ``maxiter``
bounds the number of objective evaluations (each one a circuit execution, each recorded)
whatever the method counts as an iteration, so a run's cost is known before it starts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from qiskit.quantum_info import SparsePauliOp

from qledger.runs.circuit_source import CircuitError
from qledger.runs.pubs import pauli_terms

SCIPY_METHODS = ("COBYLA", "Nelder-Mead", "Powell")
OPTIMIZERS = (*SCIPY_METHODS, "SPSA")
MAX_EVALUATIONS = 500
# Spall's gain sequences a_k = a / (k + 1 + A)^alpha, c_k = c / (k + 1)^gamma: a and c are the
# definition's learning_rate and perturbation (they depend on the problem's scale, so they are
# stated, never defaulted); the exponents are Spall's recommended ones and A is 10.
SPSA_SHAPE = {"A": 10.0, "alpha": 0.602, "gamma": 0.101}
SPSA_MEMBERS = {"learning_rate", "perturbation"}
OPTIMIZER_MEMBERS = {"method", "maxiter", "initial_parameters", "seed"} | SPSA_MEMBERS


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and bool(np.isfinite(value))


def parse_optimizer(raw: Any, parameters: int, what: str) -> dict[str, Any]:
    """The ``optimizer`` member, checked: ``parameters`` is how many numbers the initial point
    needs (``what`` says which, for the message)."""
    if not isinstance(raw, dict):
        raise CircuitError("optimizer", "is required: method, maxiter, initial_parameters "
                           "(and seed, learning_rate, perturbation for SPSA)")
    unknown = sorted(set(raw) - OPTIMIZER_MEMBERS)
    if unknown:
        raise CircuitError(f"optimizer.{unknown[0]}",
                           f"is not a member of optimizer ({', '.join(sorted(OPTIMIZER_MEMBERS))})")
    method = raw.get("method")
    if method not in OPTIMIZERS:
        raise CircuitError("optimizer.method", f"must be one of {list(OPTIMIZERS)}")
    maxiter = raw.get("maxiter")
    if not isinstance(maxiter, int) or isinstance(maxiter, bool) or not 1 <= maxiter <= MAX_EVALUATIONS:
        raise CircuitError("optimizer.maxiter",
                           f"must be an integer in 1..{MAX_EVALUATIONS} (circuit evaluations)")
    initial = raw.get("initial_parameters")
    if not isinstance(initial, list) or len(initial) != parameters or not all(_number(x) for x in initial):
        raise CircuitError("optimizer.initial_parameters", f"needs {parameters} numbers ({what})")
    seed = raw.get("seed")
    if seed is None and method == "SPSA":
        raise CircuitError("optimizer.seed", "is required for SPSA (it draws the perturbations)")
    for gain in sorted(SPSA_MEMBERS):
        if method != "SPSA" and gain in raw:
            raise CircuitError(f"optimizer.{gain}", "is a setting of SPSA only")
        if method == "SPSA" and not (_number(raw.get(gain)) and 0 < raw[gain] <= 10):
            raise CircuitError(f"optimizer.{gain}", "is required for SPSA: a number in (0, 10]")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**31):
        raise CircuitError("optimizer.seed", "must be an integer in 0..2^31-1")
    return dict(raw)


@dataclass
class LoopResult:
    best_parameters: list[float]
    best_value: float
    iterations: list[dict[str, Any]] = field(default_factory=list)  # one per evaluation, in order
    stopped: str = "converged"  # or "evaluation limit"


class _LimitReached(Exception):
    pass


def minimise(objective: Callable[[list[float]], float], settings: dict[str, Any],
             describe: Callable[[float], dict[str, Any]] = lambda value: {}) -> LoopResult:
    """Minimise ``objective`` from the stated initial point with the stated method, evaluating it
    at most ``maxiter`` times; every evaluation is in ``iterations`` with its parameters and
    value (``describe`` adds what the value means, e.g. the expected cut)."""
    limit = int(settings["maxiter"])
    result = LoopResult([float(x) for x in settings["initial_parameters"]], float("inf"))

    def evaluate(x: Sequence[float]) -> float:
        if len(result.iterations) >= limit:
            raise _LimitReached
        point = [round(float(p), 12) for p in x]
        value = float(objective(point))
        result.iterations.append({"evaluation": len(result.iterations), "parameters": point,
                                  "value": round(value, 12), **describe(value)})
        if value < result.best_value:
            result.best_parameters, result.best_value = point, value
        return value

    try:
        if settings["method"] == "SPSA":
            _spsa(evaluate, np.array(result.best_parameters), limit // 2, int(settings["seed"]),
                  float(settings["learning_rate"]), float(settings["perturbation"]))
        else:
            from scipy.optimize import minimize

            options: dict[str, Any] = ({"maxiter": limit} if settings["method"] == "COBYLA"
                                       else {"maxfev": limit, "maxiter": limit})
            minimize(evaluate, result.best_parameters, method=settings["method"], options=options)
    except _LimitReached:
        result.stopped = "evaluation limit"
    if len(result.iterations) >= limit:
        result.stopped = "evaluation limit"
    result.best_value = round(result.best_value, 12)
    return result


def _spsa(evaluate: Callable[[Sequence[float]], float], x: np.ndarray, iterations: int, seed: int,
          a: float, c: float) -> None:
    """Simultaneous perturbation stochastic approximation (Spall 1998): two evaluations per
    iteration, along a random ±1 direction drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    g = SPSA_SHAPE
    for k in range(iterations):
        a_k = a / (k + 1 + g["A"]) ** g["alpha"]
        c_k = c / (k + 1) ** g["gamma"]
        delta = rng.choice([-1.0, 1.0], size=x.shape)
        plus, minus = evaluate(x + c_k * delta), evaluate(x - c_k * delta)
        x = x - a_k * (plus - minus) / (2 * c_k) * delta


def parse_pauli_sum(dataset: Any, name: str, qubits: int) -> tuple[tuple[str, float], ...]:
    """An observable given as a dataset ``{"format": "pauli-sum", "terms": [[pauli, coeff], ...]}``
    (qubit 0 rightmost, as in ``SparsePauliOp``)."""
    where = f"datasets.{name}"
    if not isinstance(dataset, dict) or dataset.get("format") != "pauli-sum":
        raise CircuitError(f"{where}.format", "an observable dataset has format \"pauli-sum\"")
    return pauli_terms(dataset.get("terms"), f"{where}.terms", qubits)


def exact_ground_energy(terms: tuple[tuple[str, float], ...]) -> float:
    """The lowest eigenvalue of the observable, by dense diagonalisation (numpy): the classical
    baseline of a variational eigensolver on a few qubits."""
    matrix = SparsePauliOp.from_list(list(terms)).to_matrix()
    return float(np.linalg.eigvalsh(matrix)[0])
