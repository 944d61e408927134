"""`availability`: no tenant's input takes the service away, from itself or from anyone else.

Every request must get an answer (a 4xx for invalid input, or a normal reply). Losses of service
go through the one incident rule (`harness.incidents`): a server death, a dropped connection, a
timeout or a run of 5xx is attributed to a tenant's input only when replaying the requests in
flight reproduced it. Reproduced: one violation per incident, naming the smallest group whose
concurrent replay does it (a hostile request that crashes the server, or a pair that must
overlap, or a tenant's request that makes another tenant's request fail: harm to a victim).
Not reproduced, or not replayed: UNKNOWN, "not attributable to any input; history kept". One
incident is one finding, never one violation per request that failed after it. Slowness is not
harm. A tenant that sends another tenant's exact salt shares that cache by design: reported as a
finding, not a FAIL. An adversary that had no OpenAPI document to draw its fields from tried
almost nothing: the minimum-evidence table (`harness.evidence`) keeps such a run from PASSing.
"""

from __future__ import annotations

from collections import Counter

from harness.adversary.coverage import missing_schema
from harness.checks.base import CheckContext, check
from harness.history.record import History, Operation
from harness.incidents import Attribution, attribute
from harness.verdict import CheckResult, Verdict, Violation


@check("availability", "no client-controlled input (hostile values in every field, alone or overlapping) causes a "
       "5xx, a dropped connection, a timeout or a dead server, for itself or for another tenant (incidents "
       "attributed only when a replay reproduces them)")
def availability(history: History, ctx: CheckContext) -> CheckResult:
    result = CheckResult("", Verdict.UNKNOWN)
    ops = history.ops
    hostile = [o for o in ops if o.role.hostile]
    incidents = attribute(history)
    if not hostile and not incidents:
        result.verdict = Verdict.NOT_APPLICABLE
        result.notes.append("no scenario had an adversarial tenant, and no request lost service")
        return result
    result.exercised = len(hostile) if hostile else len(ops)
    if hostile:
        statuses = Counter(str(o.status) if o.status is not None else "none" for o in hostile)
        result.notes.append(f"adversarial requests by status: {dict(sorted(statuses.items()))}")
    by_id = {o.op_id: o for o in ops}
    start = min((o.invoke_s for o in ops), default=0.0)
    unattributed = 0
    for a in incidents:
        if a.reproduced:
            result.violations.append(_violation(a, by_id, start))
        else:
            unattributed += 1
            result.notes.append(_unattributed(a, start))
    blind = missing_schema(history)
    result.evidence.update(incidents=len(incidents), incidents_reproduced=len(incidents) - unattributed,
                           replays=sum(1 for a in incidents for r in a.replays if r.op_ids),
                           scenarios_without_openapi=len(blind))
    if blind:
        result.notes.append(
            f"the adversary of {', '.join(blind)} had no OpenAPI document (GET /openapi.json): it fuzzed only the few "
            "fields every OpenAI-compatible server takes, so this run has not shown availability (not PASS)")
    shared = [o for o in hostile if o.borrowed_salt_of is not None and o.ok and (o.cached_tokens or 0) > 0]
    if shared:
        result.notes.append(
            f"finding: {len(shared)} request(s) sending another tenant's exact cache salt hit that tenant's "
            "cache (by design: salt isolation rests on a trusted gateway setting salts)")
    if result.violations:
        result.verdict = Verdict.FAIL
    elif unattributed:
        result.verdict = Verdict.UNKNOWN
    else:
        result.verdict = Verdict.PASS
    return result


def _when(a: Attribution, start: float) -> str:
    return f"t={a.event.at_s - start:.1f} s"


def _unattributed(a: Attribution, start: float) -> str:
    ev = a.event
    what = "server died" if ev.what == "server-died" else f"{ev.what} ({len(ev.failed)} request(s) failed)"
    return (f"{what} at {_when(a, start)} in scenario {ev.scenario or '?'}; not attributable to any input "
            f"({a.why_not}); history kept; in flight: {len(ev.in_flight)} request(s)")


def _violation(a: Attribution, by_id: dict[str, Operation], start: float) -> Violation:
    ev, group = a.event, list(a.group or ())
    members = [by_id[i] for i in group if i in by_id]
    failed = set(ev.failed)
    harmed = [o for o in members if o.op_id in failed]
    causes = [o for o in members if o.op_id not in failed]
    harmed_tenants = sorted({o.tenant for o in harmed})
    cause_tenants = sorted({o.tenant for o in causes})
    status = next((o.status for o in harmed), ev.statuses[0] if ev.statuses else None)
    shown = "no response" if status is None else f"HTTP {status}"
    size = "alone" if len(group) == 1 else f"{len(group)} requests fired together"
    if causes and set(cause_tenants) - set(harmed_tenants):
        message = (f"harm to another tenant: request(s) {', '.join(o.op_id for o in causes)} of tenant(s) "
                   f"{', '.join(cause_tenants)} make request(s) {', '.join(o.op_id for o in harmed)} of tenant(s) "
                   f"{', '.join(harmed_tenants)} fail ({shown}) when in flight together")
    else:
        message = f"{', '.join(group)} ({size}) reproduce{'s' if len(group) == 1 else ''} a {ev.what} ({shown})"
    message += (f"; incident at {_when(a, start)}: {len(ev.failed)} request(s) failed, {len(ev.in_flight)} in flight; "
                f"bisected to {'a 1-minimal' if a.minimal else 'a (not shown minimal)'} group in "
                f"{sum(1 for r in a.replays if r.op_ids)} replay(s)")
    first = members[0] if members else None
    return Violation(
        check="availability", scenario=first.scenario if first else ev.scenario,
        users=sorted({o.user for o in members}), op_ids=group, message=message,
        details={"status": status, "incident": ev.what, "incident_at_s": ev.at_s, "failed": len(ev.failed),
                 "in_flight": list(ev.in_flight), "minimal": a.minimal, "fire_together": True,
                 "harmed_tenants": harmed_tenants, "causing_tenants": cause_tenants,
                 "request": first.request if first else None},
    )
