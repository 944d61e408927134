"""Values for one request field, by class, from its JSON schema: valid ones across the type's
range (both booleans; numbers at 0, 1, small, at the schema's or the server's limits; every enum
member; empty, long, nested and non-ASCII strings and arrays; valid JSON schemas where a field
takes one) and values drawn from the schema by hypothesis-jsonschema, then invalid ones by type
(wrong type, null where not nullable, just past a limit).

Why hypothesis-jsonschema: it turns any JSON schema (anyOf, enums, bounds, nested objects) into a
hypothesis strategy, and hypothesis is already the harness's generator; drawing is derandomised so
a field's values are the same on every machine. Schemathesis builds on the same library but drives
whole APIs on its own terms (its own client, its own checks), which the harness's history and
checks need to own.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis_jsonschema import from_schema

from harness.adversary.schema import FieldSpec, alternatives

LONG_CHARS = 10_000
UNICODE = "\u202etenant-\u00df-\u79df\u6237-\U0001f642\u0000end"
NESTED_STRING = '{"role": "system", "content": [{"cache_salt": "x"}]}'
TOKEN_FIELDS = frozenset({"max_tokens", "max_completion_tokens", "min_tokens", "truncate_prompt_tokens",
                          "thinking_token_budget"})
"""Integer fields counted in tokens: tried at the model's context length and just past it."""
VALID_JSON_SCHEMA: dict[str, Any] = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
DRAWS = 2


@dataclass(frozen=True)
class Value:
    """One value of a field: `label` names it in op ids (unique per field), `klass` is its value
    class for the coverage report, `valid` whether the schema (and the server's stated limits)
    allow it."""

    label: str
    klass: str
    value: Any
    valid: bool


@dataclass(frozen=True)
class Limits:
    """What the server says of itself that bounds values (None: not stated)."""

    context_tokens: int | None = None


def values_for(spec: FieldSpec, limits: Limits = Limits()) -> list[Value]:
    """Every value the adversary tries for `spec`: valid first (a JSON schema first where the field
    takes one), then invalid; labels unique."""
    out: list[Value] = []
    seen: set[tuple[str, bool]] = set()

    def add(label: str, klass: str, value: Any, valid: bool) -> None:
        key = json.dumps(value, sort_keys=True, default=str)
        if label in {v.label for v in out} or (key, valid) in seen:
            return
        seen.add((key, valid))
        out.append(Value(label, klass, value, valid))

    types = spec.types
    if any(_is_json_schema_field(spec.name, a) for a in alternatives(spec.schema)):
        # first: a field that takes a JSON schema is most often used (and exercised) with one
        add("json-schema", "json-schema", _json_schema_value(spec), True)
    for alt in alternatives(spec.schema):
        for label, klass, value in _valid_of(spec.name, alt, limits):
            add(label, klass, value, True)
    for i, drawn in enumerate(draw(json.dumps(spec.schema, sort_keys=True), DRAWS)):
        add(f"drawn-{i}", "drawn", drawn, True)
    if not spec.nullable:
        add("null", "null", None, False)
    for label, klass, value in _invalid_of(types, spec.schema, limits, spec.name):
        add(label, klass, value, False)
    return [v for v in out if not (v.valid and spec.is_default(v.value) and v.klass != "boolean")]


def _valid_of(name: str, alt: dict[str, Any], limits: Limits) -> list[tuple[str, str, Any]]:
    t = alt.get("type")
    if "enum" in alt:
        return [(f"enum:{m}", "enum", m) for m in alt["enum"]]
    if t == "boolean":
        return [("true", "boolean", True), ("false", "boolean", False)]
    if t in ("integer", "number"):
        one: Any = 1 if t == "integer" else 1.0
        out: list[tuple[str, str, Any]] = [("zero", "zero", 0 if t == "integer" else 0.0), ("one", "one", one),
                                           ("small", "small", 2 if t == "integer" else 0.5)]
        lo, hi = alt.get("minimum"), alt.get("maximum")
        if isinstance(lo, (int, float)):
            out.append(("at-min", "limit", _num(lo, t)))
        if isinstance(hi, (int, float)):
            out.append(("at-max", "limit", _num(hi, t)))
        if t == "integer" and name in TOKEN_FIELDS and limits.context_tokens:
            out.append(("context-length", "limit", limits.context_tokens))
            out.append(("long-valid", "long", min(512, limits.context_tokens // 4)))
        return [o for o in out if _within(o[2], lo, hi)]
    if t == "string":
        lo_len, hi_len = alt.get("minLength", 0), alt.get("maxLength")
        strings = [("empty", "empty", ""), ("short", "small", "a"), ("long", "long", "x" * LONG_CHARS),
                   ("nested", "nested", NESTED_STRING), ("unicode", "unicode", UNICODE)]
        if isinstance(hi_len, int):
            strings.append(("at-max-length", "limit", "x" * hi_len))
        return [s for s in strings if len(s[2]) >= lo_len and (not isinstance(hi_len, int) or len(s[2]) <= hi_len)]
    if t == "array":
        item = _first_valid(alt.get("items"))
        out = [("empty-list", "empty", [])]
        if item is not None:
            cap = alt.get("maxItems")
            many = 64 if not isinstance(cap, int) else cap
            out += [("one-item", "small", [item]), ("many-items", "long", [item] * many)]
        return out
    if t == "object":
        out = [("empty-object", "empty", {})]
        first = _minimal_object(alt, limits)
        if first:
            out.append(("minimal-object", "nested", first))
        return out
    return []


def _invalid_of(types: tuple[str, ...], schema: dict[str, Any], limits: Limits,
                name: str) -> list[tuple[str, str, Any]]:
    out: list[tuple[str, str, Any]] = []
    if "boolean" not in types:
        out.append(("bool-instead", "wrong-type", True))
    if not {"integer", "number"} & set(types):
        out.append(("negative", "wrong-type", -1))
    if "string" not in types:
        out.append(("string-instead", "wrong-type", "x"))
        out.append(("unicode-instead", "wrong-type", UNICODE))
    if "array" not in types:
        out.append(("list", "wrong-type", [1]))
    if "object" not in types:
        out.append(("object", "wrong-type", {"x": 1}))
    if {"integer", "number"} & set(types):
        out.append(("huge", "past-limit", 2**63))
        out.append(("negative", "past-limit", -1))
        lo, hi = schema.get("minimum"), schema.get("maximum")
        if isinstance(hi, (int, float)) and hi < 2**62:
            out.append(("past-max", "past-limit", int(hi) + 1))
        if isinstance(lo, (int, float)) and lo > -(2**62):
            out.append(("past-min", "past-limit", int(lo) - 1))
        if name in TOKEN_FIELDS and limits.context_tokens:
            out.append(("past-context-length", "past-limit", limits.context_tokens + 1))
        if "integer" in types and "number" not in types:
            out.append(("fraction", "wrong-type", 1.5))
    if "string" in types:
        out.append(("empty", "empty", ""))  # invalid where the schema sets minLength
        cap = schema.get("maxLength")
        if isinstance(cap, int):
            out.append(("past-max-length", "past-limit", "x" * (cap + 1)))
    return out


def _within(v: Any, lo: Any, hi: Any) -> bool:
    return not ((isinstance(lo, (int, float)) and v < lo) or (isinstance(hi, (int, float)) and v > hi))


def _num(x: float, t: Any) -> Any:
    return int(x) if t == "integer" else float(x)


def _first_valid(schema: Any) -> Any:
    drawn = draw(json.dumps(schema if isinstance(schema, dict) else {}, sort_keys=True), 1)
    return drawn[0] if drawn else None


def _minimal_object(alt: dict[str, Any], limits: Limits) -> dict[str, Any]:
    """An object with the first property of `alt` that has a simple valid value."""
    for prop, sub in (alt.get("properties") or {}).items():
        for inner in alternatives(sub) if isinstance(sub, dict) else []:
            if inner.get("type") in ("boolean", "integer", "number", "string") or "enum" in inner:
                vals = _valid_of(prop, inner, limits)
                if vals:
                    return {prop: vals[-1][2] if inner.get("type") == "boolean" else vals[0][2]}
    return {}


def _is_json_schema_field(name: str, alt: dict[str, Any]) -> bool:
    props = alt.get("properties") or {}
    return "json_schema" in props or "json" in props or name in ("guided_json", "json_schema")


def _json_schema_value(spec: FieldSpec) -> Any:
    """A valid structured-output request for a field that takes a JSON schema."""
    if spec.name == "response_format":
        return {"type": "json_schema", "json_schema": {"name": "probe", "schema": VALID_JSON_SCHEMA}}
    if spec.name == "structured_outputs":
        return {"json": VALID_JSON_SCHEMA}
    return VALID_JSON_SCHEMA


def _sendable(value: Any) -> bool:
    """The value encodes as UTF-8 JSON (hypothesis draws lone surrogates, which no client can send)."""
    try:
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (ValueError, UnicodeEncodeError):
        return False
    return True


@functools.lru_cache(maxsize=4096)
def draw(schema_json: str, n: int) -> tuple[Any, ...]:
    """Up to `n` distinct values valid under the JSON schema `schema_json`, drawn by
    hypothesis-jsonschema, the same on every machine (derandomised); () where the library cannot
    build a strategy for the schema."""
    try:
        strategy = from_schema(json.loads(schema_json))
    except Exception:  # a schema the library cannot read: no draws
        return ()
    out: list[Any] = []
    keys: set[str] = set()

    @settings(max_examples=max(8, 4 * n), derandomize=True, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), deadline=None)
    @given(strategy)
    def collect(value: Any) -> None:
        key = json.dumps(value, sort_keys=True, default=str)
        if key not in keys and len(out) < n and _sendable(value):
            keys.add(key)
            out.append(value)

    try:
        collect()
    except Exception:  # the library fails on some schemas (and some hypothesis versions): no draws
        return tuple(out)
    return tuple(out)
