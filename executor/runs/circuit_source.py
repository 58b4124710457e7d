"""Circuits a user brings: OpenQASM 3 or 2 source, or QPY (Qiskit's versioned binary format,
base64 in the definition), with values for their parameters.

The source bytes are what is hashed and kept (an artifact by SHA-256), so the ledger proves
which circuit text a run used, not just what it turned into.  Every refusal names the field
of the definition that is wrong, and for source text the line and column.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import io
import re
from dataclasses import dataclass
from typing import Any

from qiskit import QuantumCircuit, qasm2, qasm3, qpy

from qledger.ledger.errors import DefinitionError

FORMATS = {"qasm3": "text/x-openqasm3", "qasm2": "text/x-openqasm2", "qpy": "application/x-qiskit-qpy"}
MAX_SOURCE_BYTES = 1_000_000
# Where a parser's message says the error is: "<input>:7,0" (OpenQASM 2), "L5:C8" or "5,0:" (OpenQASM 3
# lexer); columns from 0.
_POSITION = re.compile(r"(?:<input>:|\bL|^\"?)(\d+)[:,]C?(\d+)")


class CircuitError(DefinitionError):
    """A circuit member is wrong (``workflow`` reports it as a WorkflowError)."""


@dataclass(frozen=True)
class LoadedCircuit:
    circuit: QuantumCircuit  # parameters bound
    data: bytes  # the source as given: what is hashed and kept
    media_type: str
    sha256: str
    parameters: tuple[str, ...]  # the circuit's parameter names, in Qiskit's order


def _position(exc: BaseException) -> tuple[int, int] | None:
    """(line, column from 1) of a parse error: ANTLR's offending token, somewhere down the
    chain of causes (the OpenQASM 3 parser), or the ``<input>:L,C`` of the message (OpenQASM 2)."""
    seen: list[BaseException] = [exc]
    while seen:
        current = seen.pop()
        token = getattr(current, "offendingToken", None)
        if token is not None and getattr(token, "line", None) is not None:
            return int(token.line), int(token.column) + 1
        seen += [c for c in (current.__cause__, current.__context__, *current.args)
                 if isinstance(c, BaseException)]
    where = _POSITION.search(str(exc))
    return (int(where.group(1)), int(where.group(2)) + 1) if where else None


def _syntax_error(field: str, kind: str, exc: Exception) -> CircuitError:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else "syntax error"
    position = _position(exc)
    at = f"line {position[0]}, column {position[1]}: " if position else ""
    return CircuitError(field, f"not valid {kind}: {at}{text}")


@functools.lru_cache(maxsize=64)
def _parse(fmt: str, data: bytes) -> QuantumCircuit:
    if fmt == "qasm3":
        try:
            return qasm3.loads(data.decode("utf-8"))
        except Exception as exc:  # the importer raises its own and the parser's errors
            raise _syntax_error("circuit.source", "OpenQASM 3", exc) from exc
    if fmt == "qasm2":
        try:
            return qasm2.loads(data.decode("utf-8"), custom_instructions=qasm2.LEGACY_CUSTOM_INSTRUCTIONS)
        except qasm2.QASM2ParseError as exc:
            raise _syntax_error("circuit.source", "OpenQASM 2", exc) from exc
    try:
        circuits = qpy.load(io.BytesIO(data))
    except qpy.QpyError as exc:
        raise CircuitError("circuit.qpy", f"unsupported or damaged QPY: {exc}") from exc
    except Exception as exc:  # a truncated stream fails inside struct unpacking
        raise CircuitError("circuit.qpy", f"not QPY: {type(exc).__name__}: {exc}") from exc
    if len(circuits) != 1 or not isinstance(circuits[0], QuantumCircuit):
        raise CircuitError("circuit.qpy", f"must hold exactly one circuit, not {len(circuits)}")
    return circuits[0]


def source_bytes(circuit: dict[str, Any]) -> tuple[str, bytes]:
    """(format, the bytes as given) of a circuit member in source form."""
    fmt = circuit.get("format")
    if fmt not in FORMATS:
        raise CircuitError("circuit.format", f"must be one of {sorted(FORMATS)}")
    member = "qpy" if fmt == "qpy" else "source"
    extra = set(circuit) - {"format", member, "parameters"}
    if extra:
        raise CircuitError(f"circuit.{sorted(extra)[0]}", f"is not a member of a {fmt} circuit "
                            f"(members: format, {member}, parameters)")
    value = circuit.get(member)
    if not isinstance(value, str) or not value:
        raise CircuitError(f"circuit.{member}", "is required: " + (
            "the QPY bytes in base64" if fmt == "qpy" else "the program text"))
    if fmt == "qpy":
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise CircuitError("circuit.qpy", "must be base64") from None
    else:
        data = value.encode("utf-8")
    if len(data) > MAX_SOURCE_BYTES:
        raise CircuitError(f"circuit.{member}", f"is {len(data)} bytes; at most {MAX_SOURCE_BYTES}")
    return fmt, data


def parse_source(circuit: dict[str, Any]) -> LoadedCircuit:
    """The circuit a source-form member describes, as written: parameters unbound, measurements
    as they are (what a template registers)."""
    fmt, data = source_bytes(circuit)
    parsed = _parse(fmt, data)
    return LoadedCircuit(parsed, data, FORMATS[fmt], hashlib.sha256(data).hexdigest(),
                         tuple(p.name for p in parsed.parameters))


def load_circuit(circuit: dict[str, Any], primitive: str | None = None) -> LoadedCircuit:
    """The circuit a source-form ``circuit`` member describes, its parameters bound.  For PUBs of
    a ``primitive``, left unbound (the PUBs bind them; ``parameters`` may not be given), and for
    the Estimator without its final measurements (it measures observables, not bits)."""
    fmt, data = source_bytes(circuit)
    parsed = _parse(fmt, data)
    names = tuple(p.name for p in parsed.parameters)
    if primitive is not None:
        if "parameters" in circuit:
            raise CircuitError("circuit.parameters", "PUBs bind the parameters of a swept circuit "
                               "(execute.pubs[].parameter_values); give none here")
        if primitive == "estimator":
            parsed = parsed.remove_final_measurements(inplace=False)
            if any(i.operation.name == "measure" for i in parsed.data):
                raise CircuitError(f"circuit.{'qpy' if fmt == 'qpy' else 'source'}",
                                   "an Estimator circuit may measure only at the end")
        else:
            _require_measurements(parsed, fmt)
        return LoadedCircuit(parsed, data, FORMATS[fmt], hashlib.sha256(data).hexdigest(), names)
    values = circuit.get("parameters", {})
    if not isinstance(values, dict):
        raise CircuitError("circuit.parameters", "must be an object of parameter name to number")
    missing, unknown = sorted(set(names) - set(values)), sorted(set(values) - set(names))
    if missing or unknown:
        raise CircuitError("circuit.parameters", f"the circuit's parameters are {list(names)}; "
                            + (f"missing {missing}" if missing else f"unknown {unknown}"))
    for name, value in values.items():
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise CircuitError(f"circuit.parameters.{name}", "must be a number")
    bound = (parsed.assign_parameters({p: float(values[p.name]) for p in parsed.parameters})
             if names else parsed)
    _require_measurements(bound, fmt)
    return LoadedCircuit(bound, data, FORMATS[fmt], hashlib.sha256(data).hexdigest(), names)


def _require_measurements(circuit: QuantumCircuit, fmt: str) -> None:
    if circuit.num_clbits == 0 or not any(i.operation.name == "measure" for i in circuit.data):
        raise CircuitError(f"circuit.{'qpy' if fmt == 'qpy' else 'source'}",
                           "measures nothing: a sampled circuit needs measurements into classical bits")
