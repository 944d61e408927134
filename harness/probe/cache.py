"""Probe steps for the prefix cache: the hit counters, whether a repeat hits (in usage and in the
counter), whether a cache salt separates, whether a reset empties the cache, and the block size.
Each test of a "no" has its positive control: an observation that could not show a hit is
unverified (None), never a yes."""

from __future__ import annotations

import math
import secrets

import httpx

from harness.client import GenerationRequest
from harness.probe.metrics import HITS_FAMILY, QUERIES_FAMILY, parse_prefix_cache_metrics
from harness.probe.session import Observed, ProbeSession, fresh_prompt, one_line
from harness.probe.types import Capability


async def metrics(s: ProbeSession) -> None:
    try:
        text = await s.client.get_text("/metrics")
    except httpx.HTTPError as exc:
        s.caps.prefix_cache_metrics = Capability(False, None, f"GET /metrics failed: {one_line(str(exc), 120)}")
        return
    try:
        counters, s.metrics_block_size, enabled = parse_prefix_cache_metrics(text)
    except ValueError as exc:
        s.caps.prefix_cache_metrics = Capability(
            False, None, f"/metrics is not Prometheus text: {one_line(str(exc), 100)}")
        return
    s.metrics_ok = counters is not None
    if counters is None:
        s.caps.prefix_cache_metrics = Capability(False, None, f"/metrics lacks {QUERIES_FAMILY} and/or {HITS_FAMILY}")
    else:
        flag = "" if enabled is None else f"; cache_config_info enable_prefix_caching={enabled}"
        s.caps.prefix_cache_metrics = Capability(
            True, {"queries": counters.queries, "hits": counters.hits},
            f"{QUERIES_FAMILY}_total and {HITS_FAMILY}_total present{flag}",
        )


REPEATS = 3
"""How often a positive control repeats its prompt until one repeat hits: behind a router that
spreads requests over replicas (round-robin over two), the first repeat may land on a replica that
never saw the prompt, the second comes back to the first one."""


async def until_hit(s: ProbeSession, req: GenerationRequest) -> tuple[Observed, int]:
    """Send `req` up to REPEATS times, stopping at the first answer that shows a hit (or fails);
    the last answer and how many were sent."""
    sent = 1
    obs = await s.send(req)
    while sent < REPEATS and obs.result.ok and not (obs.cached or 0) > 0:
        obs = await s.send(req)
        sent += 1
    return obs, sent


def _tries(n: int) -> str:
    return "" if n == 1 else f" (repeat {n} of up to {REPEATS})"


async def caching(s: ProbeSession) -> None:
    """Repeat a ~100-word prompt: a repeat must hit, in usage and in the hit counter."""
    c = s.caps
    before = await s.counters() if s.metrics_ok else None
    text = fresh_prompt(100)
    first = await s.send(s.request("completions", text))
    second, tries = await until_hit(s, s.request("completions", text))
    after = await s.counters() if s.metrics_ok else None
    if not (first.result.ok and second.result.ok):
        bad = first if not first.result.ok else second
        msg = f"repeat test failed: HTTP {bad.result.status}"
        c.cached_tokens = Capability(None, None, msg)
        c.prefix_caching = Capability(None, None, msg)
        return
    n = second.result.prompt_tokens
    usage = second.result.cached_tokens
    if usage is None:
        c.cached_tokens = Capability(
            False, None, "usage.prompt_tokens_details.cached_tokens absent on a repeated prompt")
    else:
        c.cached_tokens = Capability(
            usage > 0, usage,
            f"repeat of a {n}-token prompt reported cached_tokens={usage} (first {first.result.cached_tokens})"
            + _tries(tries),
        )
    if second.cached is None:
        c.prefix_caching = Capability(None, None, "no way to observe hits (no cached_tokens, no hit counter)")
    else:
        c.prefix_caching = Capability(
            second.cached > 0, second.cached > 0, f"repeat hit {second.cached} of {n} tokens (seen via {second.via})"
        )
    if before is not None and after is not None:
        dq, dh = after.queries - before.queries, after.hits - before.hits
        c.prefix_cache_metrics.evidence += f"; repeat test moved queries +{dq:.0f}, hits +{dh:.0f}"
        if dh <= 0 and (second.cached or 0) > 0:
            c.prefix_cache_metrics.evidence += " (hit counter did not move on a reported hit)"


async def salt(s: ProbeSession) -> None:
    """Same salt must hit (positive control); a different salt must not."""
    c = s.caps
    text = fresh_prompt(70)
    s1, s2 = f"probe-{secrets.token_hex(8)}", f"probe-{secrets.token_hex(8)}"
    cold = await s.send(s.request("completions", text, cache_salt=s1))
    same, tries = await until_hit(s, s.request("completions", text, cache_salt=s1))
    other = await s.send(s.request("completions", text, cache_salt=s2))
    statuses = [o.result.status for o in (cold, same, other)]
    accepted = all(o.result.ok for o in (cold, same, other))
    fields = c.openapi.value if isinstance(c.openapi.value, dict) else {}
    declared = "; declared in OpenAPI" if "cache_salt" in (fields.get("completions") or []) else ""
    c.cache_salt_accepted = Capability(accepted, accepted, f"requests with cache_salt answered {statuses}{declared}")
    if not accepted:
        c.cache_salt_effective = Capability(False, False, "cache_salt was refused")
        return
    if same.cached is None or other.cached is None:
        c.cache_salt_effective = Capability(None, None, "cannot observe cache hits, so the salt cannot be tested")
        return
    ev = (f"same salt hit {same.cached}{_tries(tries)}, different salt hit {other.cached} "
          f"(cold {cold.cached}; via {same.via})")
    if same.cached <= 0:
        c.cache_salt_effective = Capability(None, None, ev + ": no positive control, so unverified")
    else:
        c.cache_salt_effective = Capability(other.cached == 0, other.cached == 0, ev)


async def reset(s: ProbeSession) -> None:
    """Hit, reset, repeat: after POST /reset_prefix_cache the same prompt must miss."""
    c = s.caps
    if not s.allow_reset:
        c.cache_reset = Capability(None, None, "skipped (allow_reset=False)")
        return
    text = fresh_prompt(50)
    await s.send(s.request("completions", text))
    warm, _ = await until_hit(s, s.request("completions", text))
    said_yes = await s.client.reset_prefix_cache()
    if not said_yes:
        c.cache_reset = Capability(False, False, "POST /reset_prefix_cache did not answer HTTP 200")
        return
    after = await s.send(s.request("completions", text))
    if warm.cached is None or after.cached is None:
        c.cache_reset = Capability(None, None, "reset answered 200 but cache hits cannot be observed")
    elif warm.cached <= 0:
        c.cache_reset = Capability(
            None, None, f"reset answered 200 but the repeat before it did not hit ({warm.cached})")
    else:
        c.cache_reset = Capability(
            after.cached == 0, after.cached == 0,
            f"POST /reset_prefix_cache 200; repeat hit {warm.cached} before, {after.cached} after",
        )


def block_size(s: ProbeSession) -> None:
    """The block size from the cache_config_info label, else the gcd of the cached counts seen."""
    counts = sorted(set(s.cached_counts), reverse=True)
    g = math.gcd(*counts) if counts else None
    label = s.metrics_block_size
    if label is not None:
        agree = "" if not counts else (
            f"; cached counts {counts} are multiples" if all(n % label == 0 for n in counts)
            else f"; cached counts {counts} are NOT all multiples"
        )
        s.caps.block_size = Capability(True, label, f"cache_config_info block_size={label}{agree}")
    elif g:
        s.caps.block_size = Capability(True, g, f"gcd of cached counts {counts} = {g} (an upper bound)")
    else:
        s.caps.block_size = Capability(None, None, "no cache_config_info label and no cache hit seen")
