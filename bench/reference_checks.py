"""The quadratic reference forms of `cache-accounting` and `exercised`, kept to prove the fast ones
equal (`python -m bench.bench_checks verify` and tests/test_accounting_equivalence.py): the rules
written the slow, obvious way, comparing each hit with every other request of its domain (and,
for a hit only a running request explains, with every request of every other domain).
"""

from __future__ import annotations

from functools import reduce
from math import gcd

from harness.checks.accounting import with_recovered_prompt_ids
from harness.history.record import History, Operation
from harness.verdict import CheckResult, Verdict, Violation


def common_prefix_len(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def domain_model(op: Operation) -> str:
    return getattr(op, "served_model", None) or op.model


def infer_block_size(ops: list[Operation]) -> int:
    counts = [o.cached_tokens for o in ops if o.cached_tokens]
    return reduce(gcd, counts) if counts else 1


def explained_prefix(op: Operation, seen: list[Operation], block: int) -> tuple[int, Operation | None]:
    prompt = op.prompt_token_ids or []
    best, source = 0, None
    for other in seen:
        if other.prompt_token_ids is None:
            continue
        n = common_prefix_len(prompt, other.prompt_token_ids + other.output_token_ids)
        if n > best:
            best, source = n, other
    return (best // block) * block, source


_NEVER = float("inf")


def reached(m: Operation, end: int) -> float:
    """When m's prompt + output up to `end` was observably cached (see harness.checks.accounting)."""
    if not m.ok:
        return _NEVER
    if end <= len(m.prompt_token_ids or []):
        return m.invoke_s + m.ttft_s if m.ttft_s is not None else m.complete_s
    return m.complete_s


def observably_explained(op: Operation, members: list[Operation], block: int) -> int:
    """Whole blocks of op's prompt that some other member had observably cached before op was sent."""
    prompt = op.prompt_token_ids or []
    best = 0
    for m in members:
        if m is op or m.prompt_token_ids is None:
            continue
        n = (common_prefix_len(prompt, m.prompt_token_ids + m.output_token_ids) // block) * block
        while n > best and not reached(m, n) < op.invoke_s:
            n -= block
        best = max(best, n)
    return best


def accounting(history: History) -> CheckResult:
    result = CheckResult("cache-accounting", Verdict.UNKNOWN)
    everything, recovered = with_recovered_prompt_ids(history.ops)  # the same preprocessing, shared
    ops = [o for o in everything if o.ok]
    if not ops or all(o.cached_tokens is None for o in ops):
        result.notes.append("the target reported no cached-token counts")
        return result
    if recovered:
        result.evidence["hits_ids_from_identical_request"] = recovered
        result.notes.append(f"{recovered} request(s) without prompt ids (hits, or failed requests as possible sources) "
                            "took the ids of an identical request of the run")
    blind = [o for o in ops if o.cached_tokens and o.prompt_token_ids is None]
    if blind:
        result.evidence["hits_without_ids"] = len(blind)
        result.notes.append(f"{len(blind)} hit(s) came without prompt token ids and could not be checked "
                            f"(first: {blind[0].op_id})")
    block = infer_block_size([o for o in ops if o.prompt_token_ids is not None])
    result.notes.append(f"block size inferred from cached counts: {block}")
    sources = [o for o in everything if o.prompt_token_ids is not None]
    domains: dict[tuple[str, str | None], list[Operation]] = {}
    for o in sources:
        domains.setdefault((domain_model(o), o.cache_salt), []).append(o)
    salted_control = {(domain_model(o), o.cache_salt): False for o in ops if o.cache_salt and o.run != "solo"}
    unchecked: list[Operation] = []
    for key, members in domains.items():
        for op in members:
            if not (op.ok and op.cached_tokens):
                continue
            result.exercised += 1
            seen = [m for m in members if m is not op and m.invoke_s < op.complete_s]
            allowed, source = explained_prefix(op, seen, block)
            if key in salted_control and source is not None and source.user != op.user and allowed > 0:
                salted_control[key] = True
            if op.cached_tokens > allowed:
                result.violations.append(Violation(
                    check="cache-accounting", scenario=op.scenario, users=[op.user], op_ids=[op.op_id],
                    message=(f"{op.op_id}: {op.cached_tokens} cached tokens, but the longest prefix shared with any "
                             f"request of its domain (model {op.model!r}, salt {op.cache_salt!r}) explains only "
                             f"{allowed}"),
                    details={"cached_tokens": op.cached_tokens, "explained": allowed, "block_size": block,
                             "model": op.model, "cache_salt": op.cache_salt},
                ))
                continue
            if op.cached_tokens > observably_explained(op, members, block):
                others = [m for k, ms in domains.items() if k != key for m in ms if m.invoke_s < op.complete_s]
                if explained_prefix(op, others, 1)[0] >= op.cached_tokens:
                    unchecked.append(op)
    result.evidence["hits"] = result.exercised
    result.evidence["hits_unchecked"] = len(unchecked)
    result.evidence["hits_checked"] = result.exercised - len(unchecked)
    if result.violations:
        result.verdict = Verdict.FAIL
        return result
    if unchecked:
        result.notes.append(
            f"{len(unchecked)} of {result.exercised} hit(s) could be explained only by a same-domain request that "
            f"had not observably reached the cache when they were sent (first: {unchecked[0].op_id}): not checked, "
            "never excused")
    if salted_control:
        hit = sum(salted_control.values())
        result.notes.append(f"salted domains with a same-salt cross-user hit (positive control): {hit} of "
                            f"{len(salted_control)}")
        if hit == 0:
            result.notes.append("no same-salt cross-user hit observed: salt separation cannot be shown")
            return result
    if blind or unchecked:
        return result
    result.verdict = Verdict.PASS if result.exercised else Verdict.UNKNOWN
    if not result.exercised:
        result.notes.append("no cache hit was observed")
    return result


def own_explained(op: Operation, earlier: list[Operation]) -> int:
    prompt = op.prompt_token_ids or []
    best = 0
    for e in earlier:
        if e.prompt_token_ids is not None:
            best = max(best, common_prefix_len(prompt, e.prompt_token_ids + e.output_token_ids))
    return best


def exercised(history: History) -> CheckResult:
    result = CheckResult("exercised", Verdict.PASS)
    required = {i.scenario for i in history.runs if i.run == "main" and i.requires_cross_user_hits}
    for scenario in history.scenarios():
        ops = [o for o in history.ops_of(scenario, "main") if o.ok]
        if ops and all(o.cached_tokens is None for o in ops):
            result.notes.append(f"{scenario}: the target reported no cached-token counts")
            if scenario in required:
                result.verdict = Verdict.UNKNOWN
            continue
        hits = 0
        for conv in History.conversations(ops).values():
            for i, op in enumerate(conv):
                if (op.cached_tokens or 0) > own_explained(op, conv[:i]):
                    hits += 1
        result.exercised += hits
        if scenario in required:
            result.notes.append(f"{scenario}: {hits} request(s) reused cache across users")
            if hits == 0:
                result.verdict = Verdict.UNKNOWN
                result.notes.append(f"{scenario}: shares prefixes but no cross-user cache hit was observed")
    if not required:
        result.notes.append("no scenario required cross-user cache reuse")
    return result
