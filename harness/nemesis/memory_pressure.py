"""memory-pressure: the embedded server started with a KV cache a few times larger than one request
needs and few sequences at once, so blocks are evicted and reused and running requests are
preempted and computed again all the time.

The evidence that it acted comes from the server's own counters, read before and after each run:
`vllm:num_preemptions` and the count of `vllm:kv_block_lifetime_seconds` (a block's life ends when
it is evicted; sampled at rate 1 here).
"""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from harness.driver.driver import now
from harness.history.record import NemesisAction

MAX_MODEL_LEN = 1024
KV_CACHE_TOKENS = 2 * MAX_MODEL_LEN
"""The KV cache holds two longest requests: about four of the pressure scenarios' requests."""
MAX_NUM_SEQS = 4
BYTES_PER_TOKEN = 2 * 2 * 6 * 128 * 4
"""K and V, 2 layers, 6 KV heads of 128 dims, float32: the embedded model's KV per token."""

SERVER_ARGS = [
    "--max-model-len", str(MAX_MODEL_LEN),
    "--kv-cache-memory-bytes", str(KV_CACHE_TOKENS * BYTES_PER_TOKEN),
    "--max-num-seqs", str(MAX_NUM_SEQS),
    "--kv-cache-metrics", "--kv-cache-metrics-sample", "1.0",
]
"""Options for the embedded server (they follow and override its defaults)."""

COUNTERS = {"preemptions": "vllm:num_preemptions", "evictions": "vllm:kv_block_lifetime_seconds"}


async def read_counters(http: httpx.AsyncClient) -> dict[str, float] | None:
    """The preemption and eviction counts on /metrics now (None: no metrics)."""
    try:
        resp = await http.get("/metrics")
        resp.raise_for_status()
    except httpx.HTTPError:
        return None
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(resp.text):
        for key, name in COUNTERS.items():
            if family.name.removesuffix("_total") != name:
                continue
            wanted = name + ("_count" if key == "evictions" else "_total")
            out[key] = sum(s.value for s in family.samples if s.name == wanted)
    return out


def observed(before: dict[str, float] | None, after: dict[str, float] | None,
             details: dict[str, object]) -> NemesisAction:
    """The record of one run's pressure: took effect when a preemption or an eviction was counted.

    A counter that went down was reset by a server restart during the run (crash triage restarts
    the server): what the earlier lives counted is gone, so the count since the last start (the
    reading after the run) is kept as a lower bound and the record says so; a difference across
    a restart would be negative and mean nothing."""
    delta: dict[str, float] = {}
    reset: list[str] = []
    if before and after:
        for k in COUNTERS:
            b, a = before.get(k, 0.0), after.get(k, 0.0)
            if a < b:
                reset.append(k)
            delta[k] = a if a < b else a - b
    extra: dict[str, object] = {"counters": "present" if delta else "absent"}
    if reset:
        extra["counters_reset"] = reset
        extra["lower_bound"] = True
    return NemesisAction("memory-pressure", now(), "observed", took_effect=any(v > 0 for v in delta.values()),
                         details={**details, **{k: int(v) for k, v in delta.items()}, **extra})
