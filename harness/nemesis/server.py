"""What the nemeses need of the server the harness launches: options and environment of the
embedded vLLM server (`stacks.vllm.EmbeddedServer.extra_args` / `extra_env`)."""

from __future__ import annotations

from typing import Any

from harness.nemesis import NemesisError
from harness.nemesis.adapter_churn import ENV as ADAPTER_ENV
from harness.nemesis.memory_pressure import SERVER_ARGS as PRESSURE_ARGS

NEEDS_LAUNCHED = frozenset({"memory-pressure"})
"""Nemeses that are a configuration of a server the harness launches."""
NEEDS_ADAPTERS = frozenset({"adapter-churn"})
"""Nemeses that act on the server's LoRA adapters (a server without them gives them nothing to do)."""


def embedded_options(names: tuple[str, ...]) -> dict[str, Any]:
    """`EmbeddedServer` keywords for `names`: the small KV cache and few sequences of memory
    pressure, and runtime adapter updates for adapter churn (always on: harmless otherwise)."""
    args = list(PRESSURE_ARGS) if "memory-pressure" in names else []
    return {"extra_args": args, "extra_env": dict(ADAPTER_ENV)}


def check_target(names: tuple[str, ...], target: str | None, stack: str) -> None:
    """NemesisError when a nemesis cannot act on this target: memory pressure configures the
    embedded vLLM server, so it needs one the harness launches."""
    need = sorted(set(names) & NEEDS_LAUNCHED)
    if need and (target or stack != "vllm"):
        where = f"the target {target}" if target else f"the {stack} stack"
        raise NemesisError(f"{', '.join(need)} configures the embedded vLLM server the harness launches; "
                           f"it cannot act on {where}")
