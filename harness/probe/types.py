"""What the probe learns: one three-valued `Capability` per observation, all of them in
`Capabilities` (field order is the report order), and `ProbeError` for a target that cannot be
probed at all."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class ProbeError(RuntimeError):
    """The target is unreachable or not OpenAI-compatible; the message is one line."""


@dataclass
class Capability:
    """One capability: verified yes (True), verified no (False) or unverifiable (None)."""

    available: bool | None = None
    value: Any = None
    evidence: str = "not probed"

    def to_json(self) -> dict[str, Any]:
        return {"available": self.available, "value": self.value, "evidence": self.evidence}


@dataclass
class Capabilities:
    """Everything the probe learned about one target; field order is the report order."""

    target: str
    reachable: Capability = field(default_factory=Capability)
    openai_compatible: Capability = field(default_factory=Capability)
    models: Capability = field(default_factory=Capability)
    version: Capability = field(default_factory=Capability)
    completions: Capability = field(default_factory=Capability)
    chat: Capability = field(default_factory=Capability)
    output_token_ids: Capability = field(default_factory=Capability)
    prompt_token_ids: Capability = field(default_factory=Capability)
    logprobs: Capability = field(default_factory=Capability)
    streaming: Capability = field(default_factory=Capability)
    deterministic: Capability = field(default_factory=Capability)
    prefix_caching: Capability = field(default_factory=Capability)
    cached_tokens: Capability = field(default_factory=Capability)
    cache_salt_accepted: Capability = field(default_factory=Capability)
    cache_salt_effective: Capability = field(default_factory=Capability)
    prefix_cache_metrics: Capability = field(default_factory=Capability)
    cache_reset: Capability = field(default_factory=Capability)
    block_size: Capability = field(default_factory=Capability)
    openapi: Capability = field(default_factory=Capability)
    base_model: str | None = None
    adapters: dict[str, Capability] = field(default_factory=dict)
    elapsed_s: float | None = None

    def rows(self) -> list[tuple[str, Capability]]:
        """(name, capability) pairs in report order; each adapter gets its own row."""
        rows = [(name, value) for name, value in vars(self).items() if isinstance(value, Capability)]
        rows += [(f"adapter {name}", cap) for name, cap in self.adapters.items()]
        return rows

    @property
    def verified_adapters(self) -> list[str]:
        return [name for name, cap in self.adapters.items() if cap.available]

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "base_model": self.base_model,
            "elapsed_s": self.elapsed_s,
            "capabilities": {n: v.to_json() for n, v in vars(self).items() if isinstance(v, Capability)},
            "adapters": {n: c.to_json() for n, c in self.adapters.items()},
        }
