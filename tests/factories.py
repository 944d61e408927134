"""History factories for unit tests: hand-made `Operation`, `RunInfo` and `History` objects, whole
synthetic runs with honest cached-token counts, and hypothesis strategies for random histories.

`op` and `info` take the same arguments as the helpers that tests/test_checks_unit.py defines for
itself (one scenario "s", model "m", tenant "t1"), with the other fields as keywords.
`synthetic_runs` builds what `synth_folder` in tests/test_html_report.py writes (main, cf-0, cf-1,
solo per scenario), in memory, its cached counts from bench/fake_server.py's `PrefixCache`.
`cache_histories` and `honest_histories` draw small histories that hit the corners of cache
accounting (see tests/test_accounting_equivalence.py).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st

from bench import reference_checks as ref
from bench.fake_server import PrefixCache
from harness.history.record import History, Operation, Record, RunInfo

Draw = Callable[[st.SearchStrategy[Any]], Any]


def op(run: str, user: str, tokens: list[int], turn: int = 0, tops: list[dict[int, float]] | None = None,
       tenant: str = "t1", ok: bool = True, cached: int | None = 0, prompt: list[int] | None = None,
       text: str = "", **kw: Any) -> Operation:
    """One finished request of scenario "s" (override with scenario=...); top logprobs default to
    each output token alone at -1.0, the prompt to [1, 2, 3]."""
    fields: dict[str, Any] = {
        "scenario": "s", "model": "m", "endpoint": "completions", "stream": False, "cache_salt": None,
        "request": {}, "invoke_s": 0.0, "complete_s": 1.0, **kw}
    fields.setdefault("op_id", f"{run}/{fields['scenario']}/{user}/{turn}")
    return Operation(
        run=run, user=user, tenant=tenant, turn=turn, ok=ok, output_token_ids=tokens,
        top_logprobs=tops or [{t: -1.0} for t in tokens], cached_tokens=cached,
        prompt_token_ids=prompt if prompt is not None else [1, 2, 3], output_text=text, **fields)


def info(run: str, variants: dict[str, int], isolation: str = "shared", **kw: Any) -> RunInfo:
    """The RunInfo of one run of scenario "s" (override with scenario=...)."""
    return RunInfo(run=run, scenario=kw.pop("scenario", "s"), nonce=kw.pop("nonce", " n"), seed=kw.pop("seed", 0),
                   variants=variants, canaries=kw.pop("canaries", {u: [] for u in variants}),
                   tenants=kw.pop("tenants", {u: "t1" for u in variants}),
                   models=kw.pop("models", {u: "m" for u in variants}), isolation=isolation, **kw)


def history(*records: Record) -> History:
    return History(list(records))


def synthetic_runs(*, scenarios: int = 1, users: int = 3, turns: int = 1, prompt_len: int = 96, out_len: int = 16,
                   block: int = 32, seed: int = 0) -> list[Record]:
    """A healthy history: per scenario, runs main, cf-0, cf-1 (every user keeps variant 0, so the
    outputs repeat) and solo (a fresh salt per request), users sharing a prefix of half the prompt.
    Cached counts come from a `PrefixCache` of `block`-token blocks, so every hit is explainable."""
    rng = random.Random(seed)
    cache = PrefixCache(block)
    records: list[Record] = []
    clock = 0.0
    for s in range(scenarios):
        name = f"sc{s}"
        names = [f"u{i}" for i in range(users)]
        tenants = {u: f"t{i % 3}" for i, u in enumerate(names)}
        base = [rng.randrange(700, 2400) for _ in range(prompt_len // 2)]
        private = {u: [rng.randrange(700, 2400) for _ in range(prompt_len - len(base))] for u in names}
        outputs: dict[tuple[str, int], list[int]] = {}
        for run in ("main", "cf-0", "cf-1", "solo"):
            records.append(RunInfo(run=run, scenario=name, nonce=" a b c", seed=s, variants={u: 0 for u in names},
                                   canaries={u: [] for u in names}, tenants=tenants,
                                   models={u: "tiny-llama" for u in names},
                                   isolation="salt" if run == "solo" else "shared",
                                   requires_cross_user_hits=run == "main"))
            context = {u: base + private[u] for u in names}
            for turn in range(turns):
                for u in names:
                    prompt = context[u] + [1000 + turn] * 4
                    out = outputs.setdefault((u, turn), [rng.randrange(700, 2400) for _ in range(out_len)])
                    salt = f"solo-{u}-{turn}" if run == "solo" else None
                    domain = ("tiny-llama", salt)
                    cached = cache.lookup_and_insert(domain, prompt)
                    cache.insert_sequence(domain, prompt + out[:-1], after=len(prompt))
                    invoke, clock = clock, clock + 0.01
                    records.append(Operation(
                        run=run, scenario=name, op_id=f"{run}/{name}/{u}/{turn}", user=u, tenant=tenants[u],
                        turn=turn, model="tiny-llama", endpoint="completions", stream=False, cache_salt=salt,
                        request={"model": "tiny-llama", "max_tokens": out_len, "logprobs": 5},
                        invoke_s=invoke, complete_s=invoke + 0.005, ok=True, status=200,
                        prompt_token_ids=prompt, output_token_ids=list(out),
                        output_text=" ".join(f"w{t}" for t in out), token_logprobs=[-0.5] * out_len,
                        top_logprobs=[{t + k: -0.5 - k / 2 for k in range(5)} for t in out],
                        cached_tokens=cached, prompt_tokens=len(prompt), ttft_s=0.003, finish_reason="length"))
                    context[u] = prompt + out
    return records


# --- hypothesis strategies ------------------------------------------------------------------------

_ROLLS = ["explained"] * 4 + ["one block less", "zero", "unknown", "over"]


@st.composite
def cache_histories(draw: Draw) -> list[Record]:
    """A small random history built to hit the corners of cache accounting: prefixes that end
    mid-block, tiny blocks and alphabets, overlapping and back-to-back requests, salts, a served
    model that differs from the one asked for, missing prompt ids, failed requests, the same record
    twice, and any record order. Cached counts are mostly what an honest server could report (the
    reference rule's explained prefix at the block size, or less), sometimes more, sometimes unknown."""
    alphabet = draw(st.sampled_from([2, 3, 5]))
    block = draw(st.sampled_from([1, 2, 3, 4, 8]))
    discrete = draw(st.booleans())  # whole-number times: requests that start as another completes
    tokens = st.integers(0, alphabet - 1)
    records: list[Record] = []
    ops: list[Operation] = []
    for sc in [f"s{i}" for i in range(draw(st.integers(1, 2)))]:
        users = [f"u{i}" for i in range(draw(st.integers(1, 3)))]
        for run in draw(st.lists(st.sampled_from(["main", "cf-0", "solo"]), min_size=1, max_size=3, unique=True)):
            records.append(RunInfo(run=run, scenario=sc, nonce="n", seed=0, variants={u: 0 for u in users},
                                   canaries={u: [] for u in users}, tenants={u: "t" for u in users},
                                   models={u: "m" for u in users}, requires_cross_user_hits=draw(st.booleans())))
            base = draw(st.lists(tokens, max_size=3 * block + 2))
            for u in users:
                ctx = base[: draw(st.integers(0, len(base)))]
                for turn in range(draw(st.integers(1, 3))):
                    prompt = ctx + draw(st.lists(tokens, max_size=2 * block + 1))
                    out = draw(st.lists(tokens, max_size=block + 1))
                    if discrete:
                        invoke = float(draw(st.integers(0, 6)))
                        complete = invoke + draw(st.integers(0, 3))
                    else:
                        invoke = draw(st.floats(0, 10))
                        complete = invoke + draw(st.sampled_from([0.0, 0.5, 1.7, 3.0]))
                    salt = draw(st.sampled_from([None, "s1", "s2"])) if run != "solo" else f"solo-{u}-{turn}"
                    o = Operation(
                        run=run, scenario=sc, op_id=f"{run}/{sc}/{u}/{turn}", user=u, tenant="t", turn=turn,
                        model=draw(st.sampled_from(["m", "m", "a"])), endpoint="completions", stream=False,
                        cache_salt=salt, request={}, invoke_s=invoke, complete_s=complete,
                        ok=draw(st.sampled_from([True] * 9 + [False])),
                        prompt_token_ids=draw(st.sampled_from([prompt] * 12 + [None])), output_token_ids=out,
                        served_model=draw(st.sampled_from([None] * 6 + ["m", "a"])))
                    records.append(o)
                    ops.append(o)
                    if draw(st.integers(0, 19)) == 0:
                        records.append(o)  # the same record twice
                    if draw(st.booleans()):
                        ctx = prompt + out
    for o in ops:
        seen = [m for m in ops if m is not o and m.ok and m.prompt_token_ids is not None
                and (ref.domain_model(m), m.cache_salt) == (ref.domain_model(o), o.cache_salt)
                and m.invoke_s < o.complete_s]
        allowed, _ = ref.explained_prefix(o, seen, block)
        roll = draw(st.sampled_from(_ROLLS))
        if roll == "explained":
            o.cached_tokens = allowed
        elif roll == "one block less":
            o.cached_tokens = max(0, allowed - block)
        elif roll == "zero":
            o.cached_tokens = 0
        elif roll == "unknown":
            o.cached_tokens = None
        else:  # more than any shared prefix explains: a violation
            o.cached_tokens = allowed + block * draw(st.integers(1, 2))
    return list(draw(st.permutations(records)))  # history order is not invoke order under concurrency


@st.composite
def honest_histories(draw: Draw) -> list[Record]:
    """A main run of one scenario served one request at a time by bench/fake_server.py's
    `PrefixCache` (per model and salt): users share a drawn prefix, some tenants use a salt, and
    every cached count is what that cache reported, so it is always explainable."""
    block = draw(st.sampled_from([1, 2, 4, 8]))
    cache = PrefixCache(block)
    tokens = st.integers(100, 103)
    users = [f"u{i}" for i in range(draw(st.integers(1, 4)))]
    salts = {u: draw(st.sampled_from([None, None, "salt-a", "salt-b"])) for u in users}
    records: list[Record] = [RunInfo(run="main", scenario="s", nonce="n", seed=0, variants={u: 0 for u in users},
                                     canaries={u: [] for u in users}, tenants={u: f"t-{salts[u]}" for u in users},
                                     models={u: "m" for u in users}, requires_cross_user_hits=draw(st.booleans()))]
    base = draw(st.lists(tokens, max_size=4 * block + 3))
    context = {u: list(base) for u in users}
    turns = dict.fromkeys(users, 0)
    order = draw(st.lists(st.sampled_from(users), min_size=1, max_size=10))
    for i, u in enumerate(order):
        prompt = context[u] + draw(st.lists(tokens, max_size=2 * block + 1))
        out = draw(st.lists(tokens, min_size=1, max_size=block + 1))
        domain = ("m", salts[u])
        cached = cache.lookup_and_insert(domain, prompt)
        cache.insert_sequence(domain, prompt + out[:-1], after=len(prompt))
        records.append(Operation(
            run="main", scenario="s", op_id=f"main/s/{u}/{turns[u]}", user=u, tenant=f"t-{salts[u]}", turn=turns[u],
            model="m", endpoint="completions", stream=False, cache_salt=salts[u], request={},
            invoke_s=float(i), complete_s=i + 0.5, ok=True, prompt_token_ids=prompt, output_token_ids=out,
            cached_tokens=cached))
        turns[u] += 1
        context[u] = prompt + out
    return records


def ample_evidence(check: str) -> dict[str, int | float]:
    """Evidence that meets every row of `harness.evidence.MINIMUM_EVIDENCE` for `check` (for check
    results built by hand; pair with exercised >= 1)."""
    if check == "prompt-echo":
        return {"responses": 2}
    return {"tokens_compared": 32, "pairs_present": 2, "pairs_observable": 2, "hits": 2,
            "hits_checked": 2} if check in {"counterfactual-isolation", "cache-transparency",
                                            "cache-accounting"} else {}
