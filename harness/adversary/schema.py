"""The request fields of a target's generation endpoints, each with its JSON schema resolved
(`$ref` inlined, the `null` alternative split off), read from the target's OpenAPI document."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GENERATION_PATHS: dict[str, str] = {"/v1/completions": "completions", "/v1/chat/completions": "chat"}
"""The generation endpoints the harness client can send (path -> endpoint name)."""

NO_DEFAULT: Any = object()
"""The default of a field whose schema states none (distinct from a default of `null`)."""


@dataclass(frozen=True)
class FieldSpec:
    """One request field: its schema without the `null` alternative, whether `null` is allowed,
    and its documented default."""

    name: str
    schema: dict[str, Any]
    nullable: bool
    default: Any = NO_DEFAULT

    @property
    def types(self) -> tuple[str, ...]:
        """The JSON types the field accepts (besides null), in schema order."""
        out: list[str] = []
        for alt in alternatives(self.schema):
            t = alt.get("type")
            for name in t if isinstance(t, list) else [t]:
                if isinstance(name, str) and name != "null" and name not in out:
                    out.append(name)
            if "enum" in alt and "string" not in out:
                out.append("string")
        return tuple(out)

    def is_default(self, value: Any) -> bool:
        """`value` is what the server assumes when the field is left out."""
        if value is None:
            return True
        return self.default is not NO_DEFAULT and value == self.default


def alternatives(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The alternatives of a (resolved) schema: its anyOf/oneOf members, or itself."""
    alts = schema.get("anyOf") or schema.get("oneOf")
    return [a for a in alts if isinstance(a, dict)] if isinstance(alts, list) else [schema]


def resolve(doc: dict[str, Any], node: Any, depth: int = 0) -> Any:
    """`node` with every local `$ref` inlined (at most 12 levels deep: deeper ones become `{}`,
    which accepts anything)."""
    if isinstance(node, list):
        return [resolve(doc, n, depth) for n in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str):
        if depth >= 12 or not ref.startswith("#/"):
            return {}
        target: Any = doc
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        rest = {k: v for k, v in node.items() if k != "$ref"}
        return resolve(doc, {**target, **rest}, depth + 1)
    out: dict[str, Any] = {}
    for k, v in node.items():
        if k in ("properties", "patternProperties") and isinstance(v, dict):
            out[k] = {name: resolve(doc, sub, depth + 1) for name, sub in v.items()}
        elif k in _SCHEMA_KEYS:
            out[k] = resolve(doc, v, depth + 1)
        else:
            out[k] = v
    return out


_SCHEMA_KEYS = frozenset({"items", "additionalProperties", "anyOf", "oneOf", "allOf", "not", "prefixItems"})


def request_schema(doc: dict[str, Any], path: str) -> dict[str, Any] | None:
    """The resolved JSON request-body schema of POST `path`, or None if the document has none."""
    try:
        schema = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    except (KeyError, TypeError):
        return None
    out = resolve(doc, schema)
    return out if isinstance(out, dict) else None


def field_specs(doc: dict[str, Any], path: str) -> list[FieldSpec]:
    """Every top-level field of POST `path`'s request body, in schema order (allOf/anyOf members'
    properties merged); empty when the document declares none."""
    schema = request_schema(doc, path)
    if schema is None:
        return []
    props: dict[str, Any] = {}

    def collect(node: Any, depth: int = 0) -> None:
        if not isinstance(node, dict) or depth > 6:
            return
        for key in ("allOf", "anyOf", "oneOf"):
            for sub in node.get(key) or []:
                collect(resolve(doc, sub), depth + 1)
        for name, sub in (node.get("properties") or {}).items():
            props.setdefault(name, resolve(doc, sub))

    collect(schema)
    return [_spec(name, s if isinstance(s, dict) else {}) for name, s in props.items()]


def _spec(name: str, schema: dict[str, Any]) -> FieldSpec:
    default = schema.get("default", NO_DEFAULT)
    alts = alternatives(schema)
    nullable = any(a.get("type") == "null" for a in alts)
    rest = [a for a in alts if a.get("type") != "null"]
    kept: dict[str, Any] = {**rest[0]} if len(rest) == 1 else {"anyOf": rest} if rest else {}
    for key in ("minimum", "maximum", "maxLength", "minLength", "enum"):
        if key in schema and key not in kept:
            kept[key] = schema[key]
    return FieldSpec(name, kept, nullable, default)


def generation_endpoints(doc: dict[str, Any] | None) -> dict[str, list[FieldSpec]]:
    """endpoint name -> its fields, for each generation endpoint the harness can send that the
    document declares."""
    if not isinstance(doc, dict):
        return {}
    out = {}
    for path, endpoint in GENERATION_PATHS.items():
        specs = field_specs(doc, path)
        if specs:
            out[endpoint] = specs
    return out


def undriven_endpoints(doc: dict[str, Any] | None) -> list[str]:
    """POST paths of the document that take a JSON body and that the adversary does not send
    (other generation APIs, tokenizer helpers): reported as not covered."""
    if not isinstance(doc, dict) or not isinstance(doc.get("paths"), dict):
        return []
    out = []
    for path, ops in doc["paths"].items():
        post = ops.get("post") if isinstance(ops, dict) else None
        has_body = isinstance(post, dict) and "requestBody" in post
        if has_body and path not in GENERATION_PATHS:
            out.append(path)
    return out


def why_not_driven(doc: dict[str, Any] | None, path: str) -> str:
    """Why the adversary does not send POST `path`: the document gives it nothing to generate
    from (vLLM 0.32 declares `/v1/responses` as a bare object), or the client does not speak it."""
    schema = request_schema(doc, path) if isinstance(doc, dict) else None
    if schema is None or not field_specs(doc or {}, path):
        return "the document declares no request fields for it"
    return "declared fields, but not an endpoint the harness client speaks"
