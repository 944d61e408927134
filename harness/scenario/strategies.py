"""Hypothesis strategies that build valid isolation scenarios (docs/design.md, "The pipeline").

`scenarios()` draws a whole `Scenario` across every dimension the model has: tenants (1-3, each
with or without an adapter and a cache salt), users (1-4, each a 1-3 turn conversation, with a
per-user streaming override), a sharing topology, the schedule (lockstep / random / burst and
concurrency), the endpoint (completions or chat) and the sampling mode (greedy or seeded).

Sharing topologies (`TOPOLOGIES`):
- `none`: every prompt is the run nonce plus private words.
- `system`: a shared system prompt of one to two cache blocks.
- `document`: a shared document of two to four cache blocks.
- `strict-prefix`: user u0 sends exactly the shared text (no private words, no canaries), so its
  whole prompt is a strict prefix of every other sharer's prompt.
- `block-boundary`: a shared prefix whose shared tokens end within two tokens of a cache block
  boundary (before, at or after it); sharers differ right there.

Block arithmetic is exact on the embedded model, where each pool word is one token: a
completions prompt shares 3 (nonce) + N tokens for an N-word prefix, so 27-31 words put the
divergence 2 tokens before to 2 tokens after the 32-token boundary; a chat prompt adds a BOS
token before and two template tokens after the system message, so there 24-28 words do.
`expect_cross_user_hits` is set from the same arithmetic and the cache domains (adapter, salt):
a run must show cross-user cache reuse exactly when two users of one domain share at least a
full block. On other stacks words are several tokens each and the expectation is conservative.

Examples stay small (max_tokens 4 or 8, prompts under ~200 tokens) so one example runs in a few
seconds on the embedded server. Not drawn: client disconnects mid-stream (the model has no
field for them yet) and the `adversary` tenant (hostile values in every field; dozens of extra
requests per run, left to `scenarios/adversarial-tenant.yaml`).

Every scenario is named `explore-<seed>` after its content seed. Drawn content is keyed by
(seed, scenario name, user), so removing a user or a turn while shrinking keeps every other
user's words; `scenario_hash` (of the canonical JSON) names a saved counterexample's file.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

from hypothesis import strategies as st

from harness.scenario.model import Scenario, Schedule

TOPOLOGIES: tuple[str, ...] = ("none", "system", "document", "strict-prefix", "block-boundary")
SHARED_TOPOLOGIES: tuple[str, ...] = TOPOLOGIES[1:]
ENDPOINTS: tuple[str, ...] = ("completions", "chat")
INTERLEAVINGS: tuple[str, ...] = ("lockstep", "random", "burst")
ADAPTERS: tuple[str | None, ...] = (None, "adapter-1", "adapter-2")
BLOCK_TOKENS = 32
"""Cache block size of the embedded server (`--block-size 32`)."""
NONCE_TOKENS = 3
CHAT_EXTRA_TOKENS = 3
"""Chat template tokens around the system message on the embedded model: BOS before, two after."""
PREFIX_NAME = {"system": "sys", "document": "doc", "strict-prefix": "base", "block-boundary": "edge"}


def shared_tokens(endpoint: str, prefix_words: int) -> int:
    """Tokens two prompts share when both start with the nonce and the same `prefix_words` words
    (embedded model: one token per word)."""
    return NONCE_TOKENS + prefix_words + (CHAT_EXTRA_TOKENS if endpoint == "chat" else 0)


def boundary_words(endpoint: str) -> int:
    """Prefix words whose shared tokens end exactly at the first block boundary (29 / 26)."""
    return BLOCK_TOKENS - shared_tokens(endpoint, 0)


def canonical_json(scenario: Scenario) -> str:
    """The scenario's content as canonical JSON: non-default fields, sorted keys, without the
    description (which says nothing to the server)."""
    data = scenario.model_dump(mode="json", exclude_defaults=True, exclude={"description"})
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def scenario_hash(scenario: Scenario) -> str:
    """A stable 12-hex-digit hash of the scenario's content (names the found/ file)."""
    return hashlib.sha256(canonical_json(scenario).encode()).hexdigest()[:12]


def expects_cross_user_hits(scenario: Scenario) -> bool:
    """True when two users of one cache domain (adapter, salt) share at least one full block."""
    words = {p.name: p.words for p in scenario.shared_prefixes}
    domains: Counter[tuple[Any, ...]] = Counter()
    for u in scenario.users:
        if not u.prefixes:
            continue
        t = scenario.tenant(u.tenant)
        if shared_tokens(scenario.endpoint, sum(words[p] for p in u.prefixes)) >= BLOCK_TOKENS:
            domains[(t.adapter, t.cache_salt, tuple(u.prefixes))] += 1
    return any(n >= 2 for n in domains.values())


def with_expectation(scenario: Scenario) -> Scenario:
    """The scenario with `expect_cross_user_hits` set from its sharing and cache domains."""
    return scenario.model_copy(update={"expect_cross_user_hits": expects_cross_user_hits(scenario)})


def schedules(interleavings: Sequence[str] = INTERLEAVINGS, max_concurrency: int = 4) -> st.SearchStrategy[Schedule]:
    """How turns interleave: the interleaving, concurrency 1..max_concurrency and the order seed."""
    return st.builds(
        Schedule,
        interleaving=st.sampled_from(tuple(interleavings)),
        concurrency=st.integers(1, max_concurrency),
        seed=st.integers(0, 1000),
    )


def _prefix_words(draw: st.DrawFn, topology: str, endpoint: str) -> int:
    edge = boundary_words(endpoint)
    if topology == "system":
        return draw(st.integers(edge, edge + 20))
    if topology == "document":
        return draw(st.integers(2 * BLOCK_TOKENS, 4 * BLOCK_TOKENS))
    if topology == "strict-prefix":
        return draw(st.integers(edge, edge + 40))
    return edge + draw(st.integers(-2, 2))  # block-boundary


def _tenant(adapters: Sequence[str | None], salts: bool) -> st.SearchStrategy[dict[str, Any]]:
    """A tenant row without its name; `cache_salt` is a role: None, "own" or "shared"."""
    # The first value twice: most tenants stay in the default domain, so same-domain sharing is common.
    return st.fixed_dictionaries({
        "secrets": st.integers(1, 2),
        "adapter": st.sampled_from((adapters[0], *adapters)),
        "cache_salt": st.sampled_from((None, None, "own", "shared")) if salts else st.none(),
    })


@st.composite
def _user(draw: st.DrawFn, max_turns: int, max_tenants: int) -> dict[str, Any]:
    """A user row without its name; `tenant` is a shift of the round-robin tenant assignment."""
    turns = draw(st.integers(1, max_turns))
    if draw(st.booleans()):
        private: int | list[int] = draw(st.lists(st.integers(1, 16), min_size=turns, max_size=turns))
    else:
        private = draw(st.integers(1, 16))
    return {"tenant": draw(st.integers(0, max_tenants - 1)), "turns": turns, "private_words": private,
            "stream": draw(st.sampled_from((None, True, False))), "outsider": draw(st.booleans())}


@st.composite
def scenarios(
    draw: st.DrawFn,
    topologies: Sequence[str] = TOPOLOGIES,
    endpoints: Sequence[str] = ENDPOINTS,
    sampling_modes: Sequence[str] = ("greedy", "seeded"),
    users: tuple[int, int] = (1, 4),
    tenants: tuple[int, int] = (1, 3),
    max_turns: int = 3,
    adapters: Sequence[str | None] = ADAPTERS,
    salts: bool = True,
    schedule: st.SearchStrategy[Schedule] | None = None,
) -> Scenario:
    """A valid, small scenario; the arguments narrow dimensions (e.g. for a metamorphic property).

    Users are named u0.., tenants t0..; user u0 always joins the shared prefix (other users may
    stay outside it). Every tenant's salt is none, its own (`salt-tN`) or one shared by tenants.
    """
    # Structure first, as lists: the shrinker meets users, turns and tenants before the details and
    # can delete whole users and tenants.
    raw_users = draw(st.lists(_user(max_turns, tenants[1]), min_size=users[0], max_size=users[1]))
    raw_tenants = draw(st.lists(_tenant(adapters, salts), min_size=tenants[0], max_size=tenants[1]))
    topology = draw(st.sampled_from(tuple(topologies)))
    endpoint = draw(st.sampled_from(tuple(endpoints)))
    tenant_rows = [dict(t, name=f"t{i}") for i, t in enumerate(raw_tenants)]
    for t in tenant_rows:
        t["cache_salt"] = {None: None, "own": f"salt-{t['name']}", "shared": "salt-shared"}[t["cache_salt"]]
    # User i belongs to tenant (i + shift) mod #tenants: the simplest assignment spreads users.
    user_rows = [dict(u, name=f"u{i}", tenant=tenant_rows[(i + u["tenant"]) % len(tenant_rows)]["name"])
                 for i, u in enumerate(raw_users)]
    user_rows[0]["outsider"] = False
    tenant_rows = [t for t in tenant_rows if any(u["tenant"] == t["name"] for u in user_rows)]
    prefixes: list[dict[str, Any]] = []
    if topology != "none":
        name = PREFIX_NAME[topology]
        kind = "document" if topology == "document" else "system"
        prefixes.append({"name": name, "kind": kind, "words": _prefix_words(draw, topology, endpoint)})
        for u in user_rows:
            u["prefixes"] = [] if u["outsider"] else [name]
        if topology == "strict-prefix":
            # u0's prompt is exactly the shared text: no private words and no canaries in it.
            user_rows[0]["private_words"] = 0
            next(t for t in tenant_rows if t["name"] == user_rows[0]["tenant"])["secrets"] = 0
    for u in user_rows:
        u.pop("outsider")
    sampling: dict[str, Any] = {"mode": draw(st.sampled_from(tuple(sampling_modes)))}
    if sampling["mode"] == "seeded":
        sampling["temperature"] = draw(st.sampled_from((1.0, 0.7)))
        sampling["seed"] = draw(st.integers(0, 2**16))
    sched = draw(schedule if schedule is not None else schedules())
    seed = draw(st.integers(0, 2**20))
    scenario = Scenario.model_validate({
        "name": f"explore-{seed}",
        "description": f"explore: {topology} topology",
        "endpoint": endpoint,
        "stream": draw(st.booleans()),
        "max_tokens": draw(st.sampled_from((8, 4))),
        "top_logprobs": 5,
        "sampling": sampling,
        "seed": seed,
        "shared_prefixes": prefixes,
        "tenants": tenant_rows,
        "users": user_rows,
        "schedule": sched.model_dump(),
    })
    return with_expectation(scenario)
