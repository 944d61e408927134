"""`availability`: one tenant's hostile input never hurts the server for anyone else.

Every adversarial request must get a clean answer (a 4xx for invalid input, or a normal reply):
a 5xx or a dropped connection caused by one tenant's input is a FAIL of availability isolation,
and so is a server that no longer answers a health request afterwards. A tenant that sends
another tenant's exact salt shares that cache by design: reported as a finding, not a FAIL.
"""

from __future__ import annotations

from collections import Counter

from harness.checks.base import CheckContext, check
from harness.history.record import History
from harness.verdict import CheckResult, Verdict, Violation


@check("availability", "no client-controlled input (hostile values in every field) causes a 5xx, a dropped "
       "connection or an unhealthy server")
def availability(history: History, ctx: CheckContext) -> CheckResult:
    result = CheckResult("", Verdict.UNKNOWN)
    ops = [o for o in history.ops if o.role.hostile]
    if not ops:
        result.verdict = Verdict.NOT_APPLICABLE
        result.notes.append("no scenario had an adversarial tenant")
        return result
    result.exercised = len(ops)
    statuses = Counter(str(o.status) if o.status is not None else "none" for o in ops)
    result.notes.append(f"adversarial requests by status: {dict(sorted(statuses.items()))}")
    for o in ops:
        broken = o.status is None or o.status >= 500
        if broken and not o.op_id.endswith("/health"):
            result.violations.append(Violation(
                check="availability", scenario=o.scenario, users=[o.user], op_ids=[o.op_id],
                message=(f"{o.op_id}: hostile input answered with "
                         f"{'no response' if o.status is None else f'HTTP {o.status}'}: {(o.error or '')[:300]}"),
                details={"status": o.status, "request": o.request},
            ))
        elif broken:
            result.violations.append(Violation(
                check="availability", scenario=o.scenario, users=[], op_ids=[o.op_id],
                message=f"the server was unhealthy after the adversarial phase: {(o.error or '')[:300]}"))
    shared = [o for o in ops if o.borrowed_salt_of is not None and o.ok and (o.cached_tokens or 0) > 0]
    if shared:
        result.notes.append(
            f"finding: {len(shared)} request(s) sending another tenant's exact cache salt hit that tenant's "
            "cache (by design: salt isolation rests on a trusted gateway setting salts)")
    result.verdict = Verdict.FAIL if result.violations else Verdict.PASS
    return result
