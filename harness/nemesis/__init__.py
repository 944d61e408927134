"""Nemeses: what the harness does to the server while clients run (docs/design.md, "Nemeses").

Jepsen's nemesis, for inference servers. Each nemesis is named (`NEMESES`), acts on a schedule by
operation index (`schedule`), applied identically in the main run and its counterfactual re-runs
(`runner`), and leaves a `NemesisAction` record for every act, with whether it took effect.
`epochs` reads those records back for the checks: a cache reset or a restart removes explanations
of later cache hits, and an adapter name loaded with other weights is a new cache domain.
"""

from __future__ import annotations

NEMESES: dict[str, str] = {
    "memory-pressure": "a KV cache a few times one request's size and few sequences: eviction, preemption, "
                       "recomputation (server options of the embedded server)",
    "cache-reset": "POST /reset_prefix_cache (running requests included) at seeded operation indices",
    "adapter-churn": "LoRA adapters unloaded and loaded again mid-run, one name given another tenant's weights",
    "restart": "the server killed and started again mid-run",
}
"""Every nemesis, by name, with what it does."""

CONFIG_NEMESES = frozenset({"memory-pressure"})
"""Nemeses that are a server configuration rather than acts (they need a server the harness launches)."""


class NemesisError(ValueError):
    """An unknown nemesis name, or a nemesis the target cannot take."""


def parse_nemeses(text: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """Names from "a,b" (or a list of such strings), in order, without repeats; NemesisError for an
    unknown one."""
    if not text:
        return ()
    parts = [text] if isinstance(text, str) else list(text)
    names = [n.strip() for p in parts for n in p.split(",") if n.strip()]
    unknown = [n for n in names if n not in NEMESES]
    if unknown:
        raise NemesisError(f"unknown nemesis {', '.join(map(repr, unknown))}; known: {', '.join(NEMESES)}")
    return tuple(dict.fromkeys(names))


__all__ = ["CONFIG_NEMESES", "NEMESES", "NemesisError", "parse_nemeses"]
