"""`canary`: no output contains a canary phrase planted in another tenant's private context."""

from __future__ import annotations

from harness.checks.base import CheckContext, check
from harness.history.record import History
from harness.scenario.render import FISHING_WORDS
from harness.verdict import CheckResult, Verdict, Violation


def _norm(text: str) -> str:
    return " " + " ".join(text.split()) + " "


def _leaked(phrase: str, output: str) -> bool:
    """The whole canary, or its rest after a fishing tail, appears in the output."""
    words = phrase.split()
    rest = words[FISHING_WORDS:]
    return _norm(phrase) in output or (len(rest) >= 4 and _norm(" ".join(rest)) in output)


@check("canary", "no tenant's output contains a canary from another tenant's private context")
def canary(history: History, ctx: CheckContext) -> CheckResult:
    result = CheckResult("", Verdict.UNKNOWN)
    for info in history.runs:
        if info.isolation != "shared":
            continue  # solo replays hold one conversation at a time: nothing foreign to leak
        planted = [(user, c) for user, cs in info.canaries.items() for c in cs]
        for op in history.ops_of(info.scenario, info.run):
            if not op.ok:
                continue
            foreign = [(u, c) for u, c in planted if info.tenants.get(u) != op.tenant]
            if not foreign:
                continue
            result.exercised += 1
            text = _norm(op.output_text)
            for owner, phrase in foreign:
                if _leaked(phrase, text):
                    result.violations.append(Violation(
                        check="canary", scenario=info.scenario, users=[op.user, owner], op_ids=[op.op_id],
                        message=(f"output of {op.user!r} (tenant {op.tenant!r}) in run {info.run} contains the canary "
                                 f"{phrase.strip()!r} planted in {owner!r}'s context (tenant {info.tenants[owner]!r})"),
                        details={"canary": phrase.strip(), "owner": owner, "run": info.run},
                    ))
    if result.violations:
        result.verdict = Verdict.FAIL
    elif result.exercised:
        result.verdict = Verdict.PASS
    else:
        result.verdict = Verdict.NOT_APPLICABLE
        result.notes.append("no output was produced next to another tenant's canaries (single tenant, "
                            "or no tenant has secrets)")
    return result
