"""`exercised`: the run really reused cache across users where the scenario shares prefixes.

A hit is cross-user when a request's cached-token count exceeds the longest common token prefix
it shares with its own conversation's earlier prompts and outputs. Without such hits a PASS of the
output checks would be vacuous, so the verdict is UNKNOWN.
"""

from __future__ import annotations

from harness.checks.base import CheckContext, check
from harness.history.record import History, Operation
from harness.verdict import CheckResult, Verdict


def common_prefix_len(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def own_explained(op: Operation, earlier: list[Operation]) -> int:
    """Tokens of op's prompt that its own conversation's earlier turns could have cached."""
    prompt = op.prompt_token_ids or []
    best = 0
    for e in earlier:
        if e.prompt_token_ids is not None:
            best = max(best, common_prefix_len(prompt, e.prompt_token_ids + e.output_token_ids))
    return best


@check("exercised", "cache was reused across users wherever the scenario shares prefixes (else UNKNOWN)")
def exercised(history: History, ctx: CheckContext) -> CheckResult:
    result = CheckResult("", Verdict.PASS)
    required = {i.scenario for i in history.runs if i.run == "main" and i.requires_cross_user_hits}
    for scenario in history.scenarios():
        ops = [o for o in history.ops_of(scenario, "main") if o.ok]
        if ops and all(o.cached_tokens is None for o in ops):
            result.notes.append(f"{scenario}: the target reported no cached-token counts")
            if scenario in required:
                result.verdict = Verdict.UNKNOWN
            continue
        hits = 0
        for user, conv in History.conversations(ops).items():
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
