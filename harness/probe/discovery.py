"""Probe steps that find out what the target is: its models (base and adapters), version and
OpenAPI request fields. A target that does not list models the OpenAI way cannot be probed."""

from __future__ import annotations

from typing import Any

import httpx

from harness.probe.openapi import request_fields
from harness.probe.session import ProbeSession, fresh_prompt, one_line
from harness.probe.types import Capability, ProbeError


async def models(s: ProbeSession) -> list[dict[str, Any]]:
    """GET /v1/models: reachable and OpenAI-compatible, or ProbeError (one line)."""
    url = s.client.base_url
    try:
        data = await s.client.get_json("/v1/models")
    except httpx.HTTPStatusError as exc:
        raise ProbeError(
            f"{url} is not an OpenAI-compatible server: GET /v1/models answered HTTP {exc.response.status_code}"
        ) from None
    except httpx.HTTPError as exc:
        raise ProbeError(f"cannot reach {url}: {type(exc).__name__}: {one_line(str(exc)) or 'no detail'}") from None
    except ValueError:
        raise ProbeError(f"{url} is not an OpenAI-compatible server: GET /v1/models did not answer JSON") from None
    entries = data.get("data") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("id"), str) for e in entries):
        raise ProbeError(f"{url} is not an OpenAI-compatible server: GET /v1/models has no 'data' list of models")
    if not entries:
        raise ProbeError(f"{url} serves no model: GET /v1/models answered an empty list")
    c = s.caps
    c.reachable = Capability(True, url, "GET /v1/models answered HTTP 200")
    c.openai_compatible = Capability(True, True, f"/v1/models lists {len(entries)} model object(s) under 'data'")
    return entries


def classify_models(s: ProbeSession, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pick the base model (first entry without a parent); every other entry is an adapter candidate."""
    base = next((e for e in entries if not e.get("parent")), entries[0])
    s.base = s.caps.base_model = base["id"]
    candidates = [e for e in entries if e is not base]
    names = [e["id"] for e in entries]
    s.caps.models = Capability(True, names, f"base {s.base!r}; {len(candidates)} adapter candidate(s)")
    return candidates


async def adapters(s: ProbeSession, candidates: list[dict[str, Any]]) -> None:
    """Each adapter candidate must answer a completion of its own."""
    text = fresh_prompt(12)
    base = await s.client.generate(s.request("completions", text))
    for entry in candidates:
        name = entry["id"]
        looks = f"parent={entry['parent']!r}" if entry.get("parent") else "listed after the base model"
        req = s.request("completions", text)
        req.model = name
        res = await s.client.generate(req)
        if res.ok:
            differs = "differs from" if res.output_token_ids != base.output_token_ids else "equals"
            s.caps.adapters[name] = Capability(True, name, f"{looks}; completion HTTP 200; output {differs} base")
        else:
            s.caps.adapters[name] = Capability(
                False, name, f"{looks}; completion failed: HTTP {res.status} {one_line(res.error or '', 120)}")


async def version(s: ProbeSession) -> None:
    try:
        data = await s.client.get_json("/version")
    except (httpx.HTTPError, ValueError) as exc:
        s.caps.version = Capability(False, None, f"GET /version failed: {one_line(str(exc), 120)}")
        return
    v = data.get("version") if isinstance(data, dict) else None
    s.caps.version = Capability(v is not None, v, f"GET /version answered {one_line(str(data), 120)}")


async def openapi(s: ProbeSession) -> None:
    try:
        doc = await s.client.get_json("/openapi.json")
    except (httpx.HTTPError, ValueError) as exc:
        s.caps.openapi = Capability(False, None, f"GET /openapi.json failed: {one_line(str(exc), 120)}")
        return
    fields = {
        "completions": request_fields(doc, "/v1/completions") if isinstance(doc, dict) else None,
        "chat": request_fields(doc, "/v1/chat/completions") if isinstance(doc, dict) else None,
    }
    parts = [f"{k}: {len(v)} request fields" if v else f"{k}: no request schema" for k, v in fields.items()]
    salted = [k for k, v in fields.items() if v and "cache_salt" in v]
    if salted:
        parts.append(f"cache_salt declared for {'+'.join(salted)}")
    s.caps.openapi = Capability(any(fields.values()), fields, "; ".join(parts))
