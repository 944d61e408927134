"""Reading vLLM's prefix-cache counters and cache configuration off Prometheus `/metrics` text."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

QUERIES_FAMILY = "vllm:prefix_cache_queries"
HITS_FAMILY = "vllm:prefix_cache_hits"
CACHE_CONFIG_FAMILY = "vllm:cache_config_info"


@dataclass
class PrefixCacheCounters:
    """The server-wide prefix-cache counters, in tokens."""

    queries: float
    hits: float


def parse_prefix_cache_metrics(text: str) -> tuple[PrefixCacheCounters | None, int | None, bool | None]:
    """Parse Prometheus text: (queries/hits counters or None, block_size label, prefix caching label)."""
    queries = hits = None
    block_size: int | None = None
    enabled: bool | None = None
    for family in text_string_to_metric_families(text):
        # prometheus_client strips `_total` from counter family names; accept either spelling.
        name = family.name.removesuffix("_total")
        if name in (QUERIES_FAMILY, HITS_FAMILY):
            total = sum(s.value for s in family.samples if not s.name.endswith("_created"))
            if name == QUERIES_FAMILY:
                queries = total
            else:
                hits = total
        elif name == CACHE_CONFIG_FAMILY:
            for s in family.samples:
                if s.labels.get("block_size", "").isdigit():
                    block_size = int(s.labels["block_size"])
                if s.labels.get("enable_prefix_caching") in ("True", "False"):
                    enabled = s.labels["enable_prefix_caching"] == "True"
    counters = PrefixCacheCounters(queries, hits) if queries is not None and hits is not None else None
    return counters, block_size, enabled
