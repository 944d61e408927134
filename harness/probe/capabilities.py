"""Capability probe: what one target can do, each capability verified by real requests.

The checks need to know which observations a target allows before they can claim anything:
a salt test means nothing without a positive control that same-salt requests do hit, and a
cache-accounting check needs cached-token counts. So the probe never assumes; it sends small
requests (through `TargetClient` only) and records, for every capability, a three-valued
`available` (True / False / None for "could not verify"), a value and a one-line evidence string
saying what was seen.

Every probe prompt starts with a fresh random nonce, so cache entries from earlier runs (or
earlier steps of this probe) cannot make a hit look like something it is not. The cache-reset
step resets the whole server's prefix cache; pass `allow_reset=False` on a shared target.

The parts: `probe.types` (what is learned), `probe.metrics` and `probe.openapi` (parsers),
`probe.session` (shared state and sending), and the steps in `probe.discovery`,
`probe.generation` and `probe.cache`. This module runs the steps in order and re-exports the
public names.
"""

from __future__ import annotations

import time

from harness.client import TargetClient
from harness.probe import cache, discovery
from harness.probe.generation import LOGPROB_DEPTHS, generation
from harness.probe.metrics import (
    CACHE_CONFIG_FAMILY,
    HITS_FAMILY,
    QUERIES_FAMILY,
    PrefixCacheCounters,
    parse_prefix_cache_metrics,
)
from harness.probe.openapi import request_fields
from harness.probe.session import NONCE_WORDS, ProbeSession
from harness.probe.types import Capabilities, Capability, ProbeError


async def probe(client: TargetClient, *, allow_reset: bool = True) -> Capabilities:
    """Probe one target with real requests; raise ProbeError if it is unreachable or not OpenAI-compatible.
    The steps run one after another, so metric deltas are attributable to one step."""
    t0 = time.monotonic()
    s = ProbeSession(client, allow_reset)
    entries = await discovery.models(s)
    candidates = discovery.classify_models(s, entries)
    await discovery.version(s)
    await discovery.openapi(s)
    await cache.metrics(s)
    await generation(s)
    await discovery.adapters(s, candidates)
    await cache.caching(s)
    await cache.salt(s)
    await cache.reset(s)
    cache.block_size(s)
    s.caps.elapsed_s = round(time.monotonic() - t0, 3)
    return s.caps


__all__ = [
    "CACHE_CONFIG_FAMILY", "HITS_FAMILY", "LOGPROB_DEPTHS", "NONCE_WORDS", "QUERIES_FAMILY", "Capabilities",
    "Capability", "PrefixCacheCounters", "ProbeError", "parse_prefix_cache_metrics", "probe", "request_fields",
]
