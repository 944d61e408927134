"""`server-counters`: the server's own prefix-cache hit counter agrees with the per-request counts.

Over the run, the change in the Prometheus counter `vllm:prefix_cache_hits` must equal the sum of
the cached-token counts the server reported to each request. Reporting more hits than the server
counted is a FAIL (hits that never happened, or were counted nowhere). Counting more than was
reported cannot be told apart from other clients' traffic on the same server, so the cross-check is
then not applicable (noted), and does not decide the run.
"""

from __future__ import annotations

from harness.checks.base import CheckContext, Need, check
from harness.history.record import History
from harness.verdict import CheckResult, Verdict, Violation


@check("server-counters", "the Prometheus prefix-cache hit counter agrees with the sum of per-request cached tokens",
       needs=(Need.PREFIX_METRICS, Need.CACHED_TOKENS))
def counters(history: History, ctx: CheckContext) -> CheckResult:
    result = CheckResult("", Verdict.UNKNOWN)
    snaps = {m.label: m for m in history.metrics}
    before, after = snaps.get("before"), snaps.get("after")
    if before is None or after is None or before.hits is None or after.hits is None:
        # A cross-check of the cached-token counts, not a property on its own: without the
        # server's counters there is nothing to cross-check (cache-accounting still decides).
        result.verdict = Verdict.NOT_APPLICABLE
        result.notes.append("the target exposes no prefix-cache counters")
        return result
    ops = [o for o in history.ops if before.at_s <= o.invoke_s and o.complete_s <= after.at_s]
    if any(o.cached_tokens is None for o in ops if o.ok):
        result.notes.append("some requests reported no cached-token count")
        return result
    reported = sum(o.cached_tokens or 0 for o in ops if o.ok)
    counted = after.hits - before.hits
    result.exercised = len(ops)
    result.notes.append(f"counter delta {counted:g} vs sum of reported cached tokens {reported}")
    if counted > reported + 0.5:
        result.verdict = Verdict.NOT_APPLICABLE
        result.notes.append("the counter moved more than this run explains: other traffic on the server, "
                            "or hits hidden from clients; no cross-check possible")
        return result
    if reported > counted + 0.5:
        result.violations.append(Violation(
            check="server-counters", scenario="*", users=[], op_ids=[],
            message=f"the server counted {counted:g} prefix-cache hit tokens but reported {reported} to clients",
            details={"counter_delta": counted, "reported_sum": reported},
        ))
        result.verdict = Verdict.FAIL
    else:
        result.verdict = Verdict.PASS if reported > 0 else Verdict.UNKNOWN
    return result
