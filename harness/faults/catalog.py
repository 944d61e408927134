"""The fault catalog: every fault the proxy can inject, what it changes and which real bug it models.

A fault is a deliberate, documented break of the isolation property, injected by
`harness.faults.proxy.FaultProxy` between the harness and a real server, so that each check can
be shown to fail (a check that never fails on a broken server proves nothing). A *benign* entry
is a control: it perturbs the traffic the way a healthy stack may (latency, completion order,
float noise far below any near-tie tolerance) and must never make a check FAIL.

Only the data lives here; the mechanics live in the proxy. Tunables that the proxy reads are
module constants so that tests and documentation quote the same numbers.

A fault can only be shown on a target that offers what its detection observes: `FaultSpec.needs`
names those target capabilities (keys of `NEEDS`), and `CHECK_NEEDS` names what each check needs
before it can PASS. `harness selftest` reads both against the target's capability probe: a fault
whose needs the target lacks is not applicable there (n/a), and a benign control may end UNKNOWN
only in checks whose needs the target lacks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["fault", "benign"]

# --- tunables (read by the proxy) ----------------------------------------------------------------
SWAP_WINDOW_S = 2.0
"""How long a completed response waits for another user's response to swap with."""
BLEED_TAIL_WORDS = 24
"""How many trailing words of another tenant's prompt `bleed` prepends."""
STALE_MIN_PREFIX_WORDS = 32
"""Shared leading words that make `stale` treat two different prompts as the same key."""
FLIP_MIN_MARGIN = 1.0
"""Top-1 minus top-2 logprob (nats) a position needs before `flip` may change its token."""
PHANTOM_BLOCK = 32
"""`phantom-hit` reports the prompt length rounded down to a multiple of this."""
NOISE_SCALE = 1e-7
"""Magnitude of the jitter `noise` adds to every logprob."""
DELAY_MAX_S = 0.2
"""`delay` adds a uniform random latency in [0, DELAY_MAX_S)."""
REORDER_WINDOW_S = 0.1
"""`reorder` holds completed responses this long and releases the batch shuffled."""
HISTORY_SIZE = 512
"""How many earlier prompts / responses the stateful faults remember."""

# --- target capabilities that detection rests on -------------------------------------------------
NEEDS: dict[str, str] = {
    "token-ids": "output token ids (sent by the server, or recovered with its own tokenizer)",
    "top-logprobs": "at least 2 top logprobs per output position",
    "cached-tokens": "per-request cached-token counts",
    "salt": "a cache salt that verifiably separates cache domains",
    "cold-reference": "a cache-free reference (a working cache salt or cache reset)",
    "prefix-metrics": "prefix-cache counters on /metrics",
}
"""The capabilities a fault or check may need, each derived from the capability probe
(`harness.frontends.commands.selftest.offered`)."""

CHECK_NEEDS: dict[str, tuple[str, ...]] = {
    "counterfactual-isolation": ("token-ids",),
    "cache-transparency": ("token-ids", "cold-reference"),
    "canary": (),
    "exercised": ("cached-tokens",),
    "cache-accounting": ("cached-tokens",),
    "server-counters": ("prefix-metrics", "cached-tokens"),
    "availability": (),
    "requests": (),
    "timing-side-channel": ("salt",),
    "cached-tokens-side-channel": ("salt",),
}
"""What each check needs from the target before it can PASS. A check missing here needs nothing:
an UNKNOWN from it is never excused by the target's capabilities (fail closed)."""


@dataclass(frozen=True)
class FaultSpec:
    """One catalog entry: its name, whether it is a real fault or a benign control, and why."""

    name: str
    kind: Kind
    changes: str
    """What the proxy alters, in one line."""
    models: str
    """The class of real serving bug (or healthy behaviour, for benign entries) it stands for."""
    detected_by: str
    """Which harness property should catch it (or 'nothing: must PASS' for benign entries)."""
    detectors: tuple[str, ...] = ()
    """The checks expected to FAIL on it (named in the selftest's reasons)."""
    needs: tuple[str, ...] = ()
    """Target capabilities (keys of NEEDS) without which no check can observe it."""

    @property
    def description(self) -> str:
        return f"{self.changes} Models: {self.models}"


CATALOG: dict[str, FaultSpec] = {
    spec.name: spec
    for spec in (
        FaultSpec(
            "swap",
            "fault",
            f"Holds a completed response up to {SWAP_WINDOW_S:g} s for a concurrent request of another user on the "
            "same endpoint, then hands each the other's response (converting stream/non-stream as needed); "
            "passes through when no partner comes.",
            "request/response mix-ups under batching: output buffers or detokenizer state indexed by batch slot "
            "after the batch was reordered, responses routed to the wrong connection by a gateway.",
            "counterfactual isolation (a user's tokens change with another user's prompt)",
            ("counterfactual-isolation", "cache-transparency", "canary"),
            ("token-ids",),
        ),
        FaultSpec(
            "bleed",
            "fault",
            f"Prepends the last {BLEED_TAIL_WORDS} words of an earlier prompt from another tenant to this prompt "
            "(completions: the prompt string; chat: the first message's content).",
            "KV-cache bleed across tenants: a block hash that omits an input (adapter, salt, image bytes) or "
            "collides, so the tail blocks of another tenant's prompt are reused as if they were this one's.",
            "counterfactual isolation; cache transparency",
            ("counterfactual-isolation", "cache-transparency"),
            ("token-ids",),
        ),
        FaultSpec(
            "inject-context",
            "fault",
            "Prepends another tenant's whole previous prompt (all message contents) to this prompt.",
            "a stale or shared block table: a request reads KV blocks still mapped to another request's "
            "sequence, so that request's whole context leaks into this one's attention.",
            "counterfactual isolation; cache transparency",
            ("counterfactual-isolation", "cache-transparency", "canary"),
            ("token-ids",),
        ),
        FaultSpec(
            "stale",
            "fault",
            f"Answers a request with the stored response of an earlier request whose prompt shares at least "
            f"{STALE_MIN_PREFIX_WORDS} leading words but differs after them, without asking the server.",
            "a response or prefix cache keyed on too little (a truncated prompt, a hash of the first blocks "
            "only), serving one request's result for another.",
            "cache transparency; counterfactual isolation",
            ("cache-transparency", "counterfactual-isolation"),
            ("token-ids",),
        ),
        FaultSpec(
            "flip",
            "fault",
            f"Changes one output token at a position whose top-1 vs top-2 margin exceeds {FLIP_MIN_MARGIN:g} nats "
            "to a word token outside that position's top logprobs, consistently in token_ids, logprobs and text "
            "(on a server that keys logprobs by token text, such as llama.cpp: a word the server's tokenizer "
            "calls one token, edited into the text, tokens, top logprobs and shifted text offsets); later tokens "
            "are left as they were. Needs at least 2 top logprobs per position.",
            "cached and cold paths that compute different answers (a wrong KV block, a kernel reading a stale "
            "slot), surfacing as one confidently wrong token that no float drift explains.",
            "cache transparency (a non-near-tie divergence)",
            ("cache-transparency",),
            ("token-ids", "top-logprobs"),
        ),
        FaultSpec(
            "salt-drop",
            "fault",
            "Strips `cache_salt` from the request before forwarding it.",
            "a salt ignored by one layer of the stack (router, gateway, an API version that drops the field), "
            "so salted tenants share cache blocks.",
            "no observation across salts (cached-token counts)",
            ("cache-accounting", "cached-tokens-side-channel", "timing-side-channel"),
            ("cached-tokens", "salt"),
        ),
        FaultSpec(
            "salt-merge",
            "fault",
            "Replaces every request's `cache_salt` with one shared value.",
            "a salt derived from the wrong identity (a shared org or API-key id instead of the tenant), so "
            "different tenants hash into one cache domain.",
            "no observation across salts (cached-token counts)",
            ("cache-accounting", "cached-tokens-side-channel", "timing-side-channel"),
            ("cached-tokens", "salt"),
        ),
        FaultSpec(
            "phantom-hit",
            "fault",
            f"On a response whose real cached-token count is 0, reports the prompt length rounded down to a "
            f"multiple of {PHANTOM_BLOCK} as cached. Needs a reported count (a stream without "
            "stream_options.include_usage, or a server without prompt-token details, is left alone).",
            "broken cache accounting: hits counted against the wrong request or a hash collision reported as "
            "a hit; a count that nothing in the cache domain explains.",
            "cache accounting (a hit nothing explains)",
            ("cache-accounting",),
            ("cached-tokens",),
        ),
        FaultSpec(
            "noise",
            "benign",
            f"Adds jitter of about {NOISE_SCALE:g} to every logprob (same jitter for a token wherever it appears); "
            "never changes a token.",
            "healthy float drift between batch shapes and cached/cold kernels.",
            "nothing: must PASS",
        ),
        FaultSpec(
            "delay",
            "benign",
            f"Adds a uniform random latency of 0-{DELAY_MAX_S * 1000:.0f} ms before forwarding each request.",
            "network and queueing latency.",
            "nothing: must PASS",
        ),
        FaultSpec(
            "reorder",
            "benign",
            f"Holds completed responses for {REORDER_WINDOW_S * 1000:.0f} ms and releases each batch in shuffled "
            "order.",
            "completion order that differs from submission order under concurrency.",
            "nothing: must PASS",
        ),
    )
}

FAULT_NAMES: tuple[str, ...] = tuple(n for n, s in CATALOG.items() if s.kind == "fault")
BENIGN_NAMES: tuple[str, ...] = tuple(n for n, s in CATALOG.items() if s.kind == "benign")


def get(name: str) -> FaultSpec:
    """Look a fault up by name; the error lists the valid names."""
    try:
        return CATALOG[name]
    except KeyError:
        raise ValueError(f"unknown fault {name!r}; known: {', '.join(CATALOG)}") from None
