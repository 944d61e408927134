"""Resolve model roles against what the target lists, so scenarios run unchanged on any stack.

A tenant's `adapter` is a role (`adapter-1`, `adapter-2`, ... in the target's listing order) or
a literal model name; no adapter means the base model (the first model that is not an adapter).
A target serving several models is narrowed to the one under test first (`select_model`): that
model and the adapters whose `parent` it is.
"""

from __future__ import annotations

import re
from typing import Any

from harness.scenario.model import Scenario


class ResolveError(ValueError):
    pass


def select_model(entries: list[dict[str, Any]], model: str | None) -> list[dict[str, Any]]:
    """The /v1/models entries of base model `model` and its adapters (None: every entry); a model
    the target does not serve (or serves only as an adapter) is a ResolveError listing what it serves."""
    if model is None:
        return entries
    ids = [str(e.get("id")) for e in entries]
    base = [e for e in entries if e.get("id") == model]
    if not base:
        raise ResolveError(f"model {model!r} is not served by the target; it serves: {', '.join(ids) or 'nothing'}")
    if base[0].get("parent"):
        bases = [str(e.get("id")) for e in entries if not e.get("parent")]
        raise ResolveError(f"model {model!r} is an adapter of {base[0].get('parent')!r}, not a base model; "
                           f"base models served: {', '.join(bases) or 'none'}")
    return base + [e for e in entries if e.get("id") != model and e.get("parent") == model]


def split_models(entries: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """(base model, adapters) from /v1/models entries; vLLM marks adapters with `parent`."""
    if not entries:
        raise ResolveError("the target lists no models")
    ids = [e["id"] for e in entries]
    adapters = [e["id"] for e in entries if e.get("parent")]
    bases = [i for i in ids if i not in adapters]
    return (bases[0] if bases else ids[0]), adapters


def resolve_models(scenario: Scenario, entries: list[dict[str, Any]]) -> dict[str, str]:
    base, adapters = split_models(entries)
    ids = {e["id"] for e in entries}
    out: dict[str, str] = {}
    for user in scenario.users:
        role = scenario.tenant(user.tenant).adapter
        if role is None or role == "base":
            out[user.name] = base
            continue
        m = re.fullmatch(r"adapter-(\d+)", role)
        if m and role not in ids:
            k = int(m.group(1))
            if not 1 <= k <= len(adapters):
                raise ResolveError(f"scenario {scenario.name!r}: tenant {user.tenant!r} wants {role} but the "
                                   f"target lists {len(adapters)} adapter(s): {adapters}")
            out[user.name] = adapters[k - 1]
        elif role in ids:
            out[user.name] = role
        else:
            raise ResolveError(
                f"scenario {scenario.name!r}: model {role!r} is not served by the target ({sorted(ids)})")
    return out
