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
        if not planted:
            continue
        owner_tenants = {info.tenants.get(u) for u, _ in planted}
        # A phrase occurs in a normalised text exactly when its words occur there in a row, so each
        # output is read once, word run by word run, instead of once per planted canary.
        by_words: dict[tuple[str, ...], set[int]] = {}
        wordless: list[int] = []
        for i, (_, phrase) in enumerate(planted):
            words = phrase.split()
            if not words:
                wordless.append(i)
                continue
            by_words.setdefault(tuple(words), set()).add(i)
            rest = words[FISHING_WORDS:]
            if len(rest) >= 4:
                by_words.setdefault(tuple(rest), set()).add(i)
        lengths = sorted({len(w) for w in by_words})
        for op in history.ops_of(info.scenario, info.run):
            if not op.ok:
                continue
            if not owner_tenants - {op.tenant}:
                continue  # every canary of this run is the op's own tenant's
            result.exercised += 1
            words = op.output_text.split()
            found: set[int] = set()
            for k in lengths:
                for j in range(len(words) - k + 1):
                    hit = by_words.get(tuple(words[j:j + k]))
                    if hit:
                        found |= hit
            if wordless:
                text = _norm(op.output_text)
                found.update(i for i in wordless if _leaked(planted[i][1], text))
            for i in sorted(found):
                owner, phrase = planted[i]
                if info.tenants.get(owner) != op.tenant:
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
