"""The shipped JSON Schemas (``schemas/``: the workflow definition and the Submitted command's
payload), what a violation names, and which text the ledger accepts at all.

Outsiders validate with the same files (FORMAT.md points at them).  A schema says the shape;
``runs.workflow`` and ``runs.submission`` then check what a schema cannot (a circuit parses,
a backend exists, the steps form a DAG).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry, Resource

WORKFLOW_SCHEMA = "workflow.schema.json"
SUBMITTED_SCHEMA = "submitted.schema.json"

# Text no entry may hold anywhere, in a value or a key: NUL and the other C0 controls but tab,
# line feed and carriage return (PostgreSQL's text and jsonb refuse NUL; terminals act on the
# rest), and lone surrogates, which are not Unicode scalar values and have no UTF-8.
_UNSTORABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff]")


@dataclass(frozen=True)
class Violation:
    field: str  # a JSON path, as refusals name fields: execute.pubs[0].shots
    description: str


def schema_text(name: str) -> str:
    return resources.files("qledger.runs").joinpath("schemas", name).read_text(encoding="utf-8")


@cache
def _schema(name: str) -> dict[str, Any]:
    return dict(json.loads(schema_text(name)))


def _is_integer(_checker: Any, instance: Any) -> bool:
    # JSON Schema counts 2048.0 as an integer; a count of shots written 2048.0 is a mistake
    # worth naming (canonical JSON would silently turn it into 2048).
    return isinstance(instance, int) and not isinstance(instance, bool)


@cache
def _ecma_regex(pattern: str) -> re.Pattern[str]:
    # JSON Schema patterns are ECMA-262, where "$" matches only at the end of the text; Python's
    # "$" also matches before a final newline, which let "default\n" through "^[a-z]+$".
    return re.compile(re.sub(r"(?<!\\)\$", r"\\Z", pattern))


def _pattern(validator: Any, pattern: str, instance: Any, _schema: dict[str, Any]
             ) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not _ecma_regex(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


_NUMBER = {"type": "number"}
_NUMBER_LISTS = {"type": "array", "items": _NUMBER}
_default_items = Draft202012Validator.VALIDATORS["items"]


def _plain_numbers(values: list[Any]) -> bool:
    return all(type(value) is float or type(value) is int for value in values)


def _items(validator: Any, items: Any, instance: Any, schema: dict[str, Any]) -> Iterator[ValidationError]:
    # A sweep's parameter values are thousands of numbers, which the library checks one
    # subschema at a time (35 ms per 1,000 bindings of 5 values, at every check of a
    # definition).  Plain ints and floats are what those subschemas accept, so a list of
    # only them passes at once; anything else (bool, str, a subclass) goes the library's way,
    # which also names the offending item.
    if isinstance(instance, list) and "prefixItems" not in schema and (
            (items == _NUMBER and _plain_numbers(instance))
            or (items == _NUMBER_LISTS
                and all(type(row) is list and _plain_numbers(row) for row in instance))):
        return
    yield from _default_items(validator, items, instance, schema)


_Validator = validators.extend(  # type: ignore[no-untyped-call]  # the stubs leave it untyped
    Draft202012Validator, validators={"pattern": _pattern, "items": _items},
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_integer))


@cache
def _validator(name: str) -> Any:
    workflow = _schema(WORKFLOW_SCHEMA)
    # The command's check leaves its workflow member to parse_workflow, which validates it
    # against the workflow schema once (a sweep of many bindings is costly to walk twice).
    stand_in = {"$schema": workflow["$schema"], "$id": workflow["$id"], "type": "object"}
    registry: Registry[Any] = Registry().with_resource(
        workflow["$id"], Resource.from_contents(stand_in if name == SUBMITTED_SCHEMA else workflow))
    return _Validator(_schema(name), registry=registry)


def violation(name: str, instance: Any, root: str) -> Violation | None:
    """The first way ``instance`` breaks schema ``name``, or None; ``root`` names the whole
    instance (a field of its own, and "the ``root``" in messages)."""
    error = best_match(_validator(name).iter_errors(instance))
    return None if error is None else _explain(error, root)


def _path(parts: Any) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


_TYPE_WORDS = {"integer": "an integer", "object": "an object", "array": "a list", "null": "null",
               "string": "a string", "number": "a number", "boolean": "true or false"}


def _explain(error: ValidationError, root: str) -> Violation:
    where = _path(error.absolute_path) or root
    kind, schema, instance = error.validator, error.schema, error.instance
    value: Any = error.validator_value
    if kind == "additionalProperties" and isinstance(instance, dict) and isinstance(schema, dict):
        known = sorted(schema.get("properties", {}))
        extra = sorted(set(instance) - set(known))
        parent = f"the {root}" if where == root else where
        return Violation(_path([*error.absolute_path, extra[0]]),
                         f"is not a member of {parent} (members: {', '.join(known)})")
    if kind == "required" and isinstance(instance, dict):
        missing = [name for name in value if name not in instance]
        return Violation(_path([*error.absolute_path, missing[0]]), "is required")
    if kind == "type":
        names: list[str] = value if isinstance(value, list) else [value]
        return Violation(where, "must be " + " or ".join(_TYPE_WORDS.get(n, n) for n in names))
    described = isinstance(schema, dict) and schema.get("description")
    if kind in ("pattern", "minLength", "maxLength") and isinstance(described, str):
        return Violation(where, f"must be {described[0].lower()}{described[1:]}".rstrip("."))
    if kind == "const":
        return Violation(where, f"must be {json.dumps(value)}")
    if kind == "enum":
        return Violation(where, f"must be one of {json.dumps(value)}")
    if kind in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        word = {"minimum": "at least", "exclusiveMinimum": "more than", "maximum": "at most",
                "exclusiveMaximum": "less than"}[str(kind)]
        return Violation(where, f"must be {word} {value}")
    return Violation(where, error.message)


def unstorable_text(value: Any, root: str, path: str = "") -> Violation | None:
    """The first string (value or member name) in ``value`` that holds text no entry may hold;
    ``root`` names ``value`` itself."""
    if isinstance(value, str):
        return _refused(_UNSTORABLE.search(value), path or root, "holds")
    if isinstance(value, dict):
        for key, item in value.items():
            named = _refused(_UNSTORABLE.search(str(key)), path or root, "has a member name that holds")
            inner = named or unstorable_text(item, root, f"{path}.{key}" if path else str(key))
            if inner is not None:
                return inner
    if isinstance(value, list):
        for i, item in enumerate(value):
            if not isinstance(item, str | dict | list):  # numbers: most of a sweep's items
                continue
            inner = unstorable_text(item, root, f"{path}[{i}]")
            if inner is not None:
                return inner
    return None


def _refused(found: re.Match[str] | None, path: str, what: str) -> Violation | None:
    if found is None:
        return None
    return Violation(path, f"{what} U+{ord(found.group()):04X} at character {found.start()}: control "
                     "characters (but tab and newlines) and lone surrogates are refused")
