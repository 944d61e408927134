"""`requests`: every request of every run succeeded; errors make the run UNKNOWN, not PASS."""

from __future__ import annotations

from collections import Counter

from harness.checks.base import CheckContext, check
from harness.history.record import History
from harness.verdict import CheckResult, Verdict


@check("requests", "every request in every run (main, re-runs, solo replays) completed without error")
def requests_ok(history: History, ctx: CheckContext) -> CheckResult:
    ops = [o for o in history.ops if not o.role.hostile]  # hostile input may be refused
    failed = [o for o in ops if not o.ok]
    if not ops:
        return CheckResult("", Verdict.UNKNOWN, notes=["no requests were recorded"])
    if failed:
        kinds = Counter(f"HTTP {o.status}" if o.status else "no response" for o in failed)
        first = failed[0]
        return CheckResult("", Verdict.UNKNOWN, exercised=len(ops), notes=[
            f"{len(failed)} of {len(ops)} requests failed ({dict(kinds)}); comparisons that needed them were "
            f"skipped. First: {first.op_id}: {(first.error or '')[:300]}"
        ])
    return CheckResult("", Verdict.PASS, exercised=len(ops))
