"""Which request fields a server's OpenAPI document declares (e.g. whether `cache_salt` is one)."""

from __future__ import annotations

from typing import Any


def request_fields(openapi: dict[str, Any], path: str) -> list[str] | None:
    """The property names of the JSON request body of POST `path`, or None if not declared."""
    try:
        schema = openapi["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    except (KeyError, TypeError):
        return None
    names: list[str] = []

    def walk(node: Any, depth: int = 0) -> None:
        if not isinstance(node, dict) or depth > 8:
            return
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/"):
            target: Any = openapi
            for part in ref[2:].split("/"):
                target = target.get(part, {}) if isinstance(target, dict) else {}
            walk(target, depth + 1)
        for key in ("allOf", "anyOf", "oneOf"):
            for sub in node.get(key) or []:
                walk(sub, depth + 1)
        for name in node.get("properties") or {}:
            if name not in names:
                names.append(name)

    walk(schema)
    return names


async def fetch_document(client: Any) -> dict[str, Any] | None:
    """The target's OpenAPI document (GET /openapi.json), None where it serves none. `client` is a
    `harness.client.TargetClient`."""
    try:
        doc = await client.get_json("/openapi.json")
    except Exception:  # any failure means: no document to draw from (the adversary says so)
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("paths"), dict) else None
