"""The state the probe steps share, and how they send: `ProbeSession`.

Steps run one after another (sequential, so metric deltas are attributable); every request goes
through the `TargetClient`, and every prompt starts with a fresh random nonce, so cache entries
from earlier runs (or earlier steps) cannot make a hit look like something it is not.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from harness.client import Endpoint, GenerationRequest, GenerationResult, TargetClient
from harness.probe.metrics import PrefixCacheCounters, parse_prefix_cache_metrics
from harness.probe.types import Capabilities
from harness.scenario.words import draw_words

NONCE_WORDS = 4
METRICS_SETTLE_S = 5.0
"""How long to wait for a request's tokens to show in the counters (stats arrive asynchronously)."""


def one_line(text: str, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _words(n: int) -> str:
    return " ".join(draw_words(random.Random(secrets.randbits(64)), n))


def fresh_prompt(n_words: int) -> str:
    """A fresh nonce followed by n pool words, so no earlier cache entry can match it."""
    return f"{_words(NONCE_WORDS)} {_words(n_words)}"


@dataclass
class Observed:
    """A probe request's result plus the cached-token count seen for it, and where from."""

    result: GenerationResult
    cached: int | None
    via: str  # "usage", "metrics" or "none"


@dataclass
class ProbeSession:
    """The client, what the steps found so far, and the sending helpers they share."""

    client: TargetClient
    allow_reset: bool
    caps: Capabilities = field(init=False)
    base: str = ""
    metrics_ok: bool = False
    metrics_block_size: int | None = None
    cached_counts: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.caps = Capabilities(target=self.client.base_url)

    async def counters(self) -> PrefixCacheCounters | None:
        try:
            counters, _, _ = parse_prefix_cache_metrics(await self.client.get_text("/metrics"))
        except (httpx.HTTPError, ValueError):
            return None
        return counters

    async def settled_counters(
        self, before: PrefixCacheCounters, prompt_tokens: int | None,
    ) -> PrefixCacheCounters | None:
        """Poll /metrics until the request's queried tokens show up (stats arrive asynchronously)."""
        need = prompt_tokens or 1
        deadline = time.monotonic() + METRICS_SETTLE_S
        while True:
            after = await self.counters()
            if after is None or after.queries - before.queries >= need or time.monotonic() > deadline:
                return after
            await asyncio.sleep(0.05)  # polling an external counter, bounded by the deadline

    async def send(self, req: GenerationRequest) -> Observed:
        """Send one request; take its cached-token count from usage, else from the hit counter."""
        before = await self.counters() if self.metrics_ok else None
        res = await self.client.generate(req)
        if not res.ok:
            return Observed(res, None, "none")
        if res.cached_tokens is not None:
            obs = Observed(res, res.cached_tokens, "usage")
        elif before is not None:
            after = await self.settled_counters(before, res.prompt_tokens)
            obs = Observed(res, int(after.hits - before.hits), "metrics") if after else Observed(res, None, "none")
        else:
            obs = Observed(res, None, "none")
        if obs.cached:
            self.cached_counts.append(obs.cached)
        return obs

    def request(self, endpoint: Endpoint, text: str, **kw: Any) -> GenerationRequest:
        kw.setdefault("max_tokens", 4)
        kw.setdefault("top_logprobs", 0)
        if endpoint == "chat":
            return GenerationRequest("chat", self.base, messages=[{"role": "user", "content": text}], **kw)
        return GenerationRequest("completions", self.base, prompt=text, **kw)
