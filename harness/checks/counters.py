"""`server-counters`: the server's own prefix-cache hit counter agrees with the per-request counts.

Over the run, the change in the Prometheus counter `vllm:prefix_cache_hits` must equal the sum of
the cached-token counts the server reported to each request. Reporting more hits than the server
counted is a FAIL (hits that never happened, or were counted nowhere). Counting more than was
reported is a FAIL too when the harness owns the server (no other client reaches it) and no
restart reset the counters (a restart the harness made itself, for a cold solo reference, is
bracketed by snapshots of the old server's and the new server's counters, and the deltas of each
server life are added up), after allowing for what the server may count but cannot report to a
client: a failed or aborted request's prompt, and each extra choice of a request with `n` > 1
(docs/design.md, "Cache accounting"). Against a server the harness does not own, such a surplus
cannot be told apart from other clients' traffic: the cross-check is then not applicable (noted).
The "after" snapshot is taken once the counters have settled (harness.driver.campaign).
"""

from __future__ import annotations

from harness.checks.base import CheckContext, Need, check
from harness.history.record import (
    LIFE_END,
    LIFE_START,
    History,
    Incident,
    MetricsSnapshot,
    Operation,
    ReplicaAttribution,
)
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
    if any(isinstance(e, ReplicaAttribution) for e in history.events):
        # vllm-router answers /metrics with one replica's counters, not the fleet's sum (stacks.fleet).
        result.verdict = Verdict.NOT_APPLICABLE
        result.notes.append("a fleet: the router's /metrics are one replica's counters, not the fleet's; "
                            "no cross-check (cache-accounting still decides, per replica)")
        return result
    ops = [o for o in history.ops if before.at_s <= o.invoke_s and o.complete_s <= after.at_s]
    if any(o.cached_tokens is None for o in ops if o.ok):
        result.notes.append("some requests reported no cached-token count")
        return result
    reported = sum(o.cached_tokens or 0 for o in ops if o.ok)
    lives = _lives(history, before, after)
    counted = sum(end - start for start, end in lives) if lives else after.hits - before.hits
    unreportable = _unreportable_bound(ops)
    result.exercised = len(ops)
    result.notes.append(f"counter delta {counted:g} vs sum of reported cached tokens {reported}"
                        + (f" (+ at most {unreportable} the server may count but not report)" if unreportable else ""))
    header = history.header
    owned = bool(header is not None and header.stack_owned)
    incidents = [e for e in history.events if isinstance(e, Incident)]
    restarted = bool(incidents) and lives is None
    if lives and len(lives) > 1:
        result.notes.append(f"{len(lives)} server lives (restarts by the harness), each life's counters added up")
    if restarted and counted < reported - 0.5:  # the counters started again from zero mid-run
        result.verdict = Verdict.NOT_APPLICABLE
        result.notes.append("a restart reset the counters; no cross-check possible")
        return result
    if counted > reported + (unreportable or 0) + 0.5:
        if owned and not restarted and unreportable is not None:
            result.violations.append(Violation(
                check="server-counters", scenario="*", users=[], op_ids=[],
                message=(f"the server counted {counted:g} prefix-cache hit tokens but reported only {reported} to "
                         f"clients (at most {unreportable} more could come from failed requests or extra choices), "
                         "with no other traffic on a server the harness owns: hits hidden from the clients"),
                details={"counter_delta": counted, "reported_sum": reported, "unreportable_bound": unreportable},
            ))
            result.verdict = Verdict.FAIL
            return result
        result.verdict = Verdict.NOT_APPLICABLE
        why = ("a restart reset the counters" if restarted else
               "a failed request's prompt length is unknown" if unreportable is None else
               "other traffic may reach a server the harness does not own")
        result.notes.append(f"the counter moved more than this run explains ({why}); no cross-check possible")
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


def _lives(history: History, before: MetricsSnapshot, after: MetricsSnapshot) -> list[tuple[float, float]] | None:
    """(hits at its start, hits at its end) for each server life between "before" and "after", when
    every incident of the run is a restart by the harness bracketed by a LIFE_END snapshot before it
    and a LIFE_START snapshot after it; None otherwise (the counters cannot be added up)."""
    incidents = sorted((e for e in history.events if isinstance(e, Incident)), key=lambda e: e.at_s)
    ends = [m for m in history.metrics if m.label == LIFE_END]
    starts = [m for m in history.metrics if m.label == LIFE_START]
    if not (len(incidents) == len(ends) == len(starts)):
        return None
    if any(i.what != "restart" or not i.caused_by_harness for i in incidents):
        return None
    bounds = [before, *[m for pair in zip(ends, starts, strict=True) for m in pair], after]
    if any(m.hits is None for m in bounds) or any(not (e.at_s <= i.at_s <= s.at_s)
                                                  for i, e, s in zip(incidents, ends, starts, strict=True)):
        return None
    return [(float(a.hits or 0), float(b.hits or 0)) for a, b in zip(bounds[::2], bounds[1::2], strict=True)]


def _prompt_len(o: Operation) -> int | None:
    if o.prompt_tokens is not None:
        return o.prompt_tokens
    return len(o.prompt_token_ids) if o.prompt_token_ids is not None else None


def _unreportable_bound(ops: list[Operation]) -> int | None:
    """The most hit tokens the server may count without reporting them to a client: the whole prompt
    of every failed request, and the prompt once more per extra choice (None: a length is unknown)."""
    total = 0
    for o in ops:
        n = o.request.get("n") if isinstance(o.request, dict) else None
        extra = (n - 1) if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 0
        if o.ok and not extra:
            continue
        length = _prompt_len(o)
        if length is None:
            if not o.ok and o.status is not None and 400 <= o.status < 500:
                continue  # refused at validation, before any scheduling
            return None
        total += length * (extra + (0 if o.ok else 1))
    return total
