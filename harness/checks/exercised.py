"""`exercised`: the run really reused cache across users where the scenario shares prefixes.

A hit is cross-user when a request's cached-token count exceeds the longest common token prefix
it shares with its own conversation's earlier prompts and outputs. Without such hits a PASS of the
output checks would be vacuous, so the verdict is UNKNOWN.

Cost: linear in the history (one pass to group it by scenario), times the turns of a conversation
for the requests that report a hit.
"""

from __future__ import annotations

from harness.checks.base import CheckContext, Need, check
from harness.history.record import History, Operation, Role
from harness.verdict import CheckResult, Verdict


def common_prefix_len(a: list[int], b: list[int]) -> int:
    """How many leading tokens a and b share. Compares slices (in C) by bisection instead of
    looping over tokens in Python: O(n) element comparisons, O(log n) Python steps."""
    n = min(len(a), len(b))
    if type(a) is not type(b):
        a, b = list(a), list(b)
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], and they differ somewhere in [lo, hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def own_explained(op: Operation, earlier: list[Operation]) -> int:
    """Tokens of op's prompt that its own conversation's earlier turns could have cached."""
    prompt = op.prompt_token_ids or []
    best = 0
    for e in earlier:
        if e.prompt_token_ids is not None:
            best = max(best, common_prefix_len(prompt, e.prompt_token_ids + e.output_token_ids))
    return best


def _cross_user_hits(conv: list[Operation]) -> int:
    """Requests of one conversation whose cached count exceeds `own_explained` (same result,
    without the work for requests that report no hit or are explained early)."""
    hits = 0
    seqs: list[list[int] | None] = []
    for op in conv:
        cached = op.cached_tokens or 0
        if cached > 0:
            prompt = op.prompt_token_ids or []
            explained = False
            for seq in seqs:
                if seq is not None and common_prefix_len(prompt, seq) >= cached:
                    explained = True
                    break
            if not explained:
                hits += 1
        seqs.append(None if op.prompt_token_ids is None else op.prompt_token_ids + op.output_token_ids)
    return hits


@check("exercised", "cache was reused across users wherever the scenario shares prefixes (else UNKNOWN)",
       needs=(Need.CACHED_TOKENS,))
def exercised(history: History, ctx: CheckContext) -> CheckResult:
    result = CheckResult("", Verdict.PASS)
    required = {i.scenario for i in history.runs if Role.of_run(i.run) is Role.MAIN and i.requires_cross_user_hits}
    main_ops: dict[str, list[Operation]] = {}  # one pass, not one scan of the history per scenario
    for o in history.ops:
        if o.role is Role.MAIN and o.ok:
            main_ops.setdefault(o.scenario, []).append(o)
    for scenario in history.scenarios():
        ops = main_ops.get(scenario, [])
        if ops and all(o.cached_tokens is None for o in ops):
            result.notes.append(f"{scenario}: the target reported no cached-token counts")
            if scenario in required:
                result.verdict = Verdict.UNKNOWN
            continue
        hits = sum(_cross_user_hits(conv) for conv in History.conversations(ops).values())
        result.exercised += hits
        if scenario in required:
            result.notes.append(f"{scenario}: {hits} request(s) reused cache across users")
            if hits == 0:
                result.evidence["scenarios_without_reuse"] = result.evidence.get("scenarios_without_reuse", 0) + 1
                result.verdict = Verdict.UNKNOWN
                result.notes.append(f"{scenario}: shares prefixes but no cross-user cache hit was observed")
    result.evidence["scenarios_requiring_reuse"] = len(required)
    if not required:
        result.notes.append("no scenario required cross-user cache reuse")
    return result
