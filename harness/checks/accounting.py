"""`cache-accounting`: every cache hit is explained by a request of the same cache domain.

Black-box, from the history alone (DESIGN.md, "Cache accounting"): a request's cached-token count
may not exceed the longest common token prefix it shares with some other request of the same
domain (model or adapter, cache salt) that the server had seen or was running, counting that
request's prompt and generated tokens, rounded down to the block size. An unexplained hit is a
violation even when the output did not change; across salts nothing may be shared. Where tenants
use salts, a positive control (a same-salt hit across users) must be observed, else UNKNOWN.
"""

from __future__ import annotations

from functools import reduce
from math import gcd

from harness.checks.base import CheckContext, check
from harness.checks.exercised import common_prefix_len
from harness.history.record import History, Operation
from harness.verdict import CheckResult, Verdict, Violation


def domain_model(op: Operation) -> str:
    """The model that served the request (the server may resolve an alias such as "")."""
    return op.served_model or op.model


def infer_block_size(ops: list[Operation]) -> int:
    """The gcd of observed non-zero cached counts (1 when none: no rounding)."""
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


@check("cache-accounting", "every cached-token count is explained by a same-domain (model, salt) shared prefix")
def accounting(history: History, ctx: CheckContext) -> CheckResult:
    result = CheckResult("", Verdict.UNKNOWN)
    ops = [o for o in history.ops if o.ok]
    if not ops or all(o.cached_tokens is None for o in ops):
        result.notes.append("the target reported no cached-token counts")
        return result
    blind = [o for o in ops if o.cached_tokens and o.prompt_token_ids is None]
    if blind:
        result.notes.append(f"{len(blind)} hit(s) came without prompt token ids and were not checked "
                            f"(first: {blind[0].op_id})")
        ops = [o for o in ops if o.prompt_token_ids is not None]
    block = infer_block_size(ops)
    result.notes.append(f"block size inferred from cached counts: {block}")
    domains: dict[tuple[str, str | None], list[Operation]] = {}
    for o in ops:
        domains.setdefault((domain_model(o), o.cache_salt), []).append(o)
    salted_control = {(domain_model(o), o.cache_salt): False for o in ops if o.cache_salt and o.run != "solo"}
    for key, members in domains.items():
        for op in members:
            if not op.cached_tokens:
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
    if result.violations:
        result.verdict = Verdict.FAIL
        return result
    if salted_control:
        hit = sum(salted_control.values())
        result.notes.append(f"salted domains with a same-salt cross-user hit (positive control): {hit} of "
                            f"{len(salted_control)}")
        if hit == 0:
            result.notes.append("no same-salt cross-user hit observed: salt separation cannot be shown")
            return result
    result.verdict = Verdict.PASS if result.exercised else Verdict.UNKNOWN
    if not result.exercised:
        result.notes.append("no cache hit was observed")
    return result
