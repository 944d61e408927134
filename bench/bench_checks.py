"""Check cost: every registered check over synthetic histories of 10k, 100k and 1M requests.

The histories look like a long harness run over the scenario library: many scenarios of 16 users
in 4 tenants, 4 turns each over a 64-token shared prefix (nonce + system prompt), a canary in
every user's first turn, a main run, two counterfactual re-runs (half the users re-drawn in each)
and a solo replay (a fresh salt per request); one scenario in four gives each tenant its own
cache salt. Cached-token counts come from a simulated block-level prefix cache per (model, salt),
so every check has real work to do and the healthy history passes. Each size runs in a fresh
child process; a check that exceeds its budget is stopped and reported as such.

    .venv/bin/python -m bench.bench_checks                    # 10k, 100k, 1M; bench/results/checks.json
    .venv/bin/python -m bench.bench_checks --sizes 10000,100000
    .venv/bin/python -m bench.bench_checks verify             # fast checks == reference rules

`verify` compares `cache-accounting` and `exercised` with their quadratic reference forms
(bench/reference_checks.py) on thousands of small random histories built to hit the corners:
prefixes that end mid-block, tiny blocks, overlapping and back-to-back requests, salts, aliases,
missing prompt ids, failed requests and the same record appearing twice.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.fake_server import PrefixCache

ROOT = Path(__file__).resolve().parent.parent
BLOCK = 32


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# --- synthetic histories -------------------------------------------------------------------------

Turn = tuple[list[int], list[int], str, list[dict[int, float]]]
"""One turn of a synthetic conversation: (prompt, output, text, tops)."""


class _Conversations:
    """The conversations of one synthetic scenario, per (user, variant), drawn on first use and
    shared by the runs that hold the same variant."""

    def __init__(self, seed: int, s: int, vocab: list[int], text_of: dict[int, str],
                 tops: dict[int, dict[int, float]], prefix: list[int], canary_tokens: dict[str, list[int]],
                 private: int, turns: int, out_len: int) -> None:
        self.seed, self.s, self.vocab, self.text_of, self.tops = seed, s, vocab, text_of, tops
        self.prefix, self.canary_tokens = prefix, canary_tokens
        self.private, self.turns, self.out_len = private, turns, out_len
        self.content: dict[tuple[str, int], list[list[int]]] = {}
        self.convs: dict[tuple[str, int], list[Turn]] = {}

    def turn_texts(self, u: str, variant: int) -> list[list[int]]:
        """Each turn's private tokens; variant 0 carries the user's canary in its first turn."""
        key = (u, variant)
        if key not in self.content:
            r = random.Random(hash((self.seed, self.s, u, variant)))
            ts = [[r.choice(self.vocab) for _ in range(self.private)] for _ in range(self.turns)]
            if variant == 0:
                ts[0][8:8] = self.canary_tokens[u]
            self.content[key] = ts
        return self.content[key]

    def get(self, u: str, variant: int) -> list[Turn]:
        """Per turn (prompt, output, text, tops): the output is a hash of the prompt's tail."""
        key = (u, variant)
        if key not in self.convs:
            ctx = list(self.prefix)
            turns_out = []
            for private_tokens in self.turn_texts(u, variant):
                prompt = ctx + private_tokens
                x = hash((tuple(prompt[-16:]), len(prompt)))
                out = [self.vocab[(x >> (3 * i)) % len(self.vocab)] for i in range(self.out_len)]
                turns_out.append((prompt, out, "".join(self.text_of[o] for o in out), [self.tops[o] for o in out]))
                ctx = prompt + out
            self.convs[key] = turns_out
        return self.convs[key]


def synthesize(n_ops: int, seed: int = 0, users: int = 16, turns: int = 4, tenants: int = 4,
               private: int = 20, out_len: int = 16, salted_every: int = 4) -> list[Any]:
    """About n_ops operations (whole scenarios) with their RunInfo records, in run order."""
    from harness.history.record import Operation, RunInfo
    from harness.scenario.words import word_pool

    rng = random.Random(seed)
    pool = word_pool()
    vocab = list(range(100, 100 + len(pool)))  # token id 100+i is pool word i
    text_of = {t: " " + pool[t - 100] for t in vocab}
    tops = {t: {t: -0.05, **{vocab[(t - 100 + 37 * j) % len(vocab)]: -3.0 - 0.5 * j for j in range(1, 5)}}
            for t in vocab}
    token_logprobs = [-0.05] * out_len
    cache = PrefixCache(BLOCK, max_blocks=sys.maxsize)  # never evicts: every hit stays explainable
    records: list[Any] = []
    clock = 0.0
    per_scenario = users * turns * 4
    model = "tiny-llama"
    for s in range((n_ops + per_scenario - 1) // per_scenario):
        name = f"sc{s:05d}"
        salted = salted_every and s % salted_every == salted_every - 1
        prefix = [rng.choice(vocab) for _ in range(64)]  # 3-token nonce + 61-token system prompt
        names = [f"u{u:02d}" for u in range(users)]
        tenant = {u: f"t{i % tenants}" for i, u in enumerate(names)}
        salt = {u: (f"salt-{tenant[u]}-{s}" if salted else None) for u in names}
        canary_tokens: dict[str, list[int]] = {}
        for u in names:
            canary_tokens[u] = [rng.choice(vocab) for _ in range(4)]
        canaries = {u: ["".join(text_of[t] for t in canary_tokens[u])] for u in names}
        request = {"model": model, "max_tokens": out_len, "stream": False}
        conversations = _Conversations(seed, s, vocab, text_of, tops, prefix, canary_tokens, private, turns, out_len)

        halves = [set(names[0::2]), set(names[1::2])]
        runs = [("main", {u: 0 for u in names}, "shared")]
        runs += [(f"cf-{i}", {u: 0 if u in fixed else i + 1 for u in names}, "shared")
                 for i, fixed in enumerate(halves)]
        runs.append(("solo", {u: 0 for u in names}, "salt"))
        for run, variants, isolation in runs:
            records.append(RunInfo(
                run=run, scenario=name, nonce="n", seed=s, variants=variants, canaries=canaries,
                tenants=tenant, models={u: model for u in names}, isolation=isolation,
                requires_cross_user_hits=run == "main"))
            order = [(u, t) for t in range(turns) for u in names]
            if isolation != "shared":
                order = [(u, t) for u in names for t in range(turns)]
            for u, t in order:
                prompt, out, text, top = conversations.get(u, variants[u])[t]
                if isolation == "shared":
                    op_salt = salt[u]
                    cached = cache.lookup_and_insert((model, op_salt), prompt)
                    cache.insert_sequence((model, op_salt), prompt + out[:-1], after=len(prompt))
                    invoke, clock = clock, clock + 0.002
                    complete = invoke + 0.02  # about ten requests in flight
                else:
                    op_salt, cached = f"solo-{rng.getrandbits(64):016x}", 0
                    invoke, clock = clock, clock + 0.02
                    complete = clock
                records.append(Operation(
                    run=run, scenario=name, op_id=f"{run}/{name}/{u}/{t}", user=u, tenant=tenant[u], turn=t,
                    model=model, endpoint="completions", stream=False, cache_salt=op_salt, request=request,
                    invoke_s=invoke, complete_s=complete, ok=True, status=200, prompt_token_ids=prompt,
                    output_token_ids=out, output_text=text, token_logprobs=token_logprobs, top_logprobs=top,
                    cached_tokens=cached, prompt_tokens=len(prompt), finish_reason="length"))
    return records


# --- timing ---------------------------------------------------------------------------------------

class _OverBudget(Exception):
    pass


def time_checks(records: list[Any], budget_s: float, reference: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """CPU seconds of each registered check over one History; with `reference`, also of the
    quadratic reference forms of the two rewritten checks (kept apart from the total)."""
    from bench import reference_checks as ref
    from harness.checks.base import CheckContext, Scope, all_checks
    from harness.history.record import History

    history = History(records)
    ctx = CheckContext(tolerance=1e-3)
    out: dict[str, Any] = {}
    before: dict[str, Any] = {}

    def alarm(signum: int, frame: object) -> None:
        raise _OverBudget()

    # The budget is CPU time (ITIMER_PROF): on a shared machine wall time says little.
    signal.signal(signal.SIGPROF, alarm)
    todo: list[tuple[str, Any, dict[str, Any]]] = [(c.name, c, out) for c in all_checks(Scope.RUN)]
    if reference:
        todo += [("cache-accounting", lambda h, c: ref.accounting(h), before),
                 ("exercised", lambda h, c: ref.exercised(h), before)]
    for name, fn, into in todo:
        t0, w0 = time.process_time(), time.perf_counter()
        signal.setitimer(signal.ITIMER_PROF, budget_s)
        try:
            r = fn(history, ctx)
            signal.setitimer(signal.ITIMER_PROF, 0)
            into[name] = {"cpu_s": time.process_time() - t0, "wall_s": time.perf_counter() - w0,
                          "verdict": r.verdict.value, "exercised": r.exercised, "violations": len(r.violations)}
        except _OverBudget:
            into[name] = {"cpu_s": time.process_time() - t0, "wall_s": time.perf_counter() - w0,
                          "verdict": "stopped", "over_budget_s": budget_s}
    return out, before


def size_main(n: int, budget_s: float, seed: int, reference: bool) -> dict[str, Any]:
    base = _rss_mb()
    t0 = time.process_time()
    records = synthesize(n, seed)
    gen_s = time.process_time() - t0
    n_ops = sum(1 for r in records if getattr(r, "kind", "") == "op")
    after_gen = _rss_mb()
    checks, before = time_checks(records, budget_s, reference)
    total = sum(c["cpu_s"] for c in checks.values())
    return {"requests": n_ops, "records": len(records), "generate_cpu_s": gen_s, "checks": checks,
            "reference": before,
            "all_checks_cpu_s": total, "complete": all(c["verdict"] != "stopped" for c in checks.values()),
            "rss_after_history_mb": after_gen, "maxrss_mb": _rss_mb(), "base_rss_mb": base}


# --- verification against the reference rules -----------------------------------------------------

def _random_history(rng: random.Random) -> list[Any]:
    from bench import reference_checks as ref
    from harness.history.record import Operation, RunInfo

    alphabet = rng.choice([2, 3, 5])  # tiny alphabets: long, ragged common prefixes
    block = rng.choice([1, 2, 3, 4, 8])
    discrete = rng.random() < 0.6  # whole-number times: requests that start as another completes
    records: list[Any] = []
    ops: list[Any] = []
    for sc in [f"s{i}" for i in range(rng.randint(1, 2))]:
        users = [f"u{i}" for i in range(rng.randint(1, 4))]
        for run in rng.sample(["main", "cf-0", "solo"], rng.randint(1, 3)):
            records.append(RunInfo(run=run, scenario=sc, nonce="n", seed=0, variants={u: 0 for u in users},
                                   canaries={u: [] for u in users}, tenants={u: "t" for u in users},
                                   models={u: "m" for u in users}, requires_cross_user_hits=rng.random() < 0.7))
            base = [rng.randrange(alphabet) for _ in range(rng.randint(0, 3 * block + 2))]
            for u in users:
                ctx = base[: rng.randint(0, len(base))]
                for turn in range(rng.randint(1, 4)):
                    prompt = ctx + [rng.randrange(alphabet) for _ in range(rng.randint(0, 2 * block + 1))]
                    out = [rng.randrange(alphabet) for _ in range(rng.randint(0, block + 1))]
                    if discrete:
                        invoke = float(rng.randint(0, 6))
                        complete = invoke + rng.randint(0, 3)
                    else:
                        invoke = rng.uniform(0, 10)
                        complete = invoke + rng.choice([0.0, rng.uniform(0, 3)])
                    salt = rng.choice([None, "s1", "s1", "s2"]) if run != "solo" else f"solo-{rng.random()}"
                    o = Operation(
                        run=run, scenario=sc, op_id=f"{run}/{sc}/{u}/{turn}", user=u, tenant="t", turn=turn,
                        model=rng.choice(["m", "m", "m", "a"]), endpoint="completions", stream=False,
                        cache_salt=salt, request={}, invoke_s=invoke, complete_s=complete, ok=rng.random() < 0.95,
                        prompt_token_ids=None if rng.random() < 0.04 else prompt, output_token_ids=out)
                    if rng.random() < 0.1:
                        o.served_model = rng.choice(["m", "a", None])
                    records.append(o)
                    ops.append(o)
                    if rng.random() < 0.03:
                        records.append(o)  # the same record twice
                    if rng.random() < 0.7:
                        ctx = prompt + out
    # Cached counts: mostly what an honest server could report (the reference rule's explained
    # prefix at this block size, or less), sometimes more (a violation), sometimes unknown.
    for o in ops:
        seen = [m for m in ops if m is not o and m.ok and m.prompt_token_ids is not None
                and (ref.domain_model(m), m.cache_salt) == (ref.domain_model(o), o.cache_salt)
                and m.invoke_s < o.complete_s]
        allowed, _ = ref.explained_prefix(o, seen, block)
        roll = rng.random()
        if roll < 0.6:
            o.cached_tokens = allowed
        elif roll < 0.75:
            o.cached_tokens = max(0, allowed - block)
        elif roll < 0.85:
            o.cached_tokens = 0
        elif roll < 0.93:
            o.cached_tokens = None
        else:
            o.cached_tokens = allowed + block * rng.randint(1, 2)
    rng.shuffle(records)  # history order is not invoke order under concurrency
    return records


def _summary(r: Any) -> tuple[Any, ...]:
    return (r.verdict, r.exercised, list(r.notes),
            [(v.check, v.scenario, v.users, v.op_ids, v.message, v.details) for v in r.violations])


def verify(iterations: int, seed: int) -> int:
    from bench import reference_checks as ref
    from harness.checks.base import CheckContext, get
    from harness.checks.exercised import common_prefix_len
    from harness.history.record import History

    ctx = CheckContext(tolerance=1e-3)
    rng = random.Random(seed)
    for _ in range(20 * iterations):
        a = [rng.randrange(3) for _ in range(rng.randint(0, 40))]
        b = a[: rng.randint(0, len(a))] + [rng.randrange(3) for _ in range(rng.randint(0, 40))]
        if common_prefix_len(a, b) != ref.common_prefix_len(a, b):
            print(f"MISMATCH in common_prefix_len({a}, {b})")
            return 1
    counts = {"cache-accounting": 0, "exercised": 0}
    outcomes: dict[str, set[str]] = {k: set() for k in counts}
    for i in range(iterations):
        history = History(_random_history(rng))
        for name, reference in (("cache-accounting", ref.accounting), ("exercised", ref.exercised)):
            fast = get(name)(history, ctx)
            slow = reference(history)
            if _summary(fast) != _summary(slow):
                print(f"MISMATCH in {name} at iteration {i}:\nfast {_summary(fast)}\nref  {_summary(slow)}")
                return 1
            counts[name] += 1
            outcomes[name].add(fast.verdict.value)
    print(f"verify: {iterations} random histories, cache-accounting and exercised identical to the reference "
          f"(verdicts seen: { {k: sorted(v) for k, v in outcomes.items()} })")
    return 0


# --- orchestration --------------------------------------------------------------------------------

def markdown(results: list[dict[str, Any]]) -> str:
    names = list(results[0]["checks"])
    head = "| check | " + " | ".join(f"{r['requests']:,} requests" for r in results) + " |"
    lines = [head, "|---|" + "---|" * len(results)]

    def cell(c: dict[str, Any]) -> str:
        if c["verdict"] == "stopped":
            return f"> {c['over_budget_s']:.0f} s (stopped)"
        return f"{c['cpu_s']:.2f} s"

    for n in names:
        lines.append(f"| {n} | " + " | ".join(cell(r["checks"][n]) for r in results) + " |")
    for n in ("cache-accounting", "exercised"):
        if any(n in r.get("reference", {}) for r in results):
            lines.append(f"| {n}, before the rewrite (reference rule) | " + " | ".join(
                cell(r["reference"][n]) if n in r.get("reference", {}) else "not run" for r in results) + " |")
    lines.append("| **all checks** | " + " | ".join(
        (f"**{r['all_checks_cpu_s']:.1f} s**" if r["complete"] else f"**> {r['all_checks_cpu_s']:.0f} s**")
        for r in results) + " |")
    lines.append("| per 1,000 requests | " + " | ".join(
        (f"{1000 * r['all_checks_cpu_s'] / r['requests']:.3f} s" if r["complete"] else "(some stopped)")
        for r in results) + " |")
    lines.append("| verdicts | " + " | ".join(
        ", ".join(sorted({c['verdict'] for c in r['checks'].values()})) for r in results) + " |")
    lines.append("| peak RSS (history alone) | " + " | ".join(
        f"{r['maxrss_mb']:.0f} MB ({r['rss_after_history_mb']:.0f} MB)" for r in results) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="cost of every check over synthetic histories")
    ap.add_argument("mode", nargs="?", default="bench", choices=["bench", "verify", "table", "_size"],
                    help="bench (default); verify; table: print the markdown table of --out again")
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--budget", type=float, default=300.0, help="CPU seconds allowed per check and size")
    ap.add_argument("--iterations", type=int, default=3000, help="random histories for `verify`")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reference", default="10000,100000",
                    help="sizes at which to also time the pre-rewrite (quadratic) accounting and exercised")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "checks.json")
    args = ap.parse_args(argv)
    if args.mode == "verify":
        return verify(args.iterations, args.seed)
    if args.mode == "table":
        print(markdown(json.loads(args.out.read_text())))
        return 0
    if args.mode == "_size":
        print(json.dumps(size_main(int(args.sizes), args.budget, args.seed, args.reference == "yes")))
        return 0
    results = []
    reference_sizes = {int(x) for x in args.reference.split(",") if x}
    for n in [int(x) for x in args.sizes.split(",")]:
        proc = subprocess.run([sys.executable, "-m", "bench.bench_checks", "_size", "--sizes", str(n),
                               "--budget", str(args.budget), "--seed", str(args.seed),
                               "--reference", "yes" if n in reference_sizes else "no"],
                              cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-4000:], file=sys.stderr)
            return 1
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(r)
        print(f"{r['requests']:>9,} requests: all checks {r['all_checks_cpu_s']:.1f} s CPU "
              f"({'complete' if r['complete'] else 'some stopped'}), peak RSS {r['maxrss_mb']:.0f} MB; "
              + ", ".join(f"{k} {v['cpu_s']:.2f}s/{v['verdict']}" for k, v in r["checks"].items()), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
