"""The two output properties, each comparing a conversation against a reference run.

- `counterfactual-isolation` (the mission's property): a user whose own content was held fixed
  gets the same tokens when every other user's private content is re-drawn.
- `cache-transparency`: each conversation replayed alone with no cache reuse gives the same
  tokens as in the busy run.
A conversation is compared turn by turn up to its first divergence; later turns have different
prompts and are not comparable. Near-tie drift is counted apart from violations.
"""

from __future__ import annotations

from collections import Counter

from harness.checks.base import CheckContext, Need, check
from harness.checks.compare import compare_tokens
from harness.history.record import History, Operation
from harness.verdict import CheckResult, Verdict, Violation


def _compare_conversations(
    name: str, scenario: str, ref_run: str, ref_ops: list[Operation], obs_run: str, obs_ops: list[Operation],
    users: set[str], ctx: CheckContext, result: CheckResult,
) -> None:
    ref = History.conversations(ref_ops)
    obs = History.conversations(obs_ops)
    for user in sorted(users):
        for r, o in zip(ref.get(user, []), obs.get(user, [])):
            if not (r.ok and o.ok):
                result.notes.append(f"{scenario}/{user} turn {r.turn}: not compared (a request failed)")
                break
            cmp = compare_tokens(r, o, ctx.tolerance)
            result.exercised += 1
            if cmp.outcome == "equal":
                continue
            if cmp.outcome == "drift":
                result.drift += 1
            else:
                result.violations.append(Violation(
                    check=name, scenario=scenario, users=[user], op_ids=[r.op_id, o.op_id],
                    message=(f"user {user!r} turn {r.turn}: {obs_run} output differs from {ref_run} at token "
                             f"{cmp.position} ({cmp.reference_token} -> {cmp.observed_token}): {cmp.reason}"),
                    details={"position": cmp.position, "reference_token": cmp.reference_token,
                             "observed_token": cmp.observed_token, "margin": cmp.margin,
                             "reference_run": ref_run, "observed_run": obs_run, "turn": r.turn},
                ))
            break  # later turns of this conversation have different prompts


def _id_provenance(ops: list[Operation], result: CheckResult) -> None:
    """Say when token ids were recovered from text by the target's tokenizer, not sent by the server."""
    ok = [o for o in ops if o.ok]
    recovered = Counter(o.token_ids_source for o in ok if o.token_ids_source not in (None, "server"))
    if recovered:
        result.notes.append(
            f"{sum(recovered.values())} of {len(ok)} outputs came without token ids; their ids were recovered from "
            f"token text with the target's own tokenizer (/extras/tokenize) {dict(recovered)}: two ids with the "
            "same text cannot be told apart")


def _decide(result: CheckResult, what: str) -> CheckResult:
    if result.violations:
        result.verdict = Verdict.FAIL
    elif result.exercised == 0:
        result.verdict = Verdict.UNKNOWN
        result.notes.append(f"no {what} could be made")
    else:
        result.verdict = Verdict.PASS
    return result


@check("counterfactual-isolation",
       "a user's outputs do not change when other users' private content is re-drawn (shared prefixes kept)",
       needs=(Need.TOKEN_IDS,), compares_outputs=True)
def counterfactual(history: History, ctx: CheckContext) -> CheckResult:
    result = CheckResult("", Verdict.UNKNOWN)
    runs_of: dict[str, list] = {}  # one pass over the runs, not one per scenario
    for info in history.runs:
        runs_of.setdefault(info.scenario, []).append(info)
    for scenario in history.scenarios():
        main = history.ops_of(scenario, "main")
        for info in runs_of.get(scenario, []):
            if not info.run.startswith("cf-"):
                continue
            fixed = {u for u, v in info.variants.items() if v == 0}
            _compare_conversations("counterfactual-isolation", scenario, "main", main, info.run,
                                   history.ops_of(scenario, info.run), fixed, ctx, result)
    _id_provenance([o for o in history.ops if o.run == "main" or o.run.startswith("cf-")], result)
    return _decide(result, "counterfactual comparisons")


@check("cache-transparency",
       "each conversation replayed alone with no cache reuse gives the same tokens as in the busy run",
       needs=(Need.TOKEN_IDS, Need.COLD_REFERENCE), compares_outputs=True)
def transparency(history: History, ctx: CheckContext) -> CheckResult:
    result = CheckResult("", Verdict.UNKNOWN)
    warm = []
    for scenario in history.scenarios():
        solo = history.run_info(scenario, "solo")
        if solo is None:
            continue
        if solo.isolation == "warm":
            warm.append(scenario)
        _compare_conversations("cache-transparency", scenario, "solo", history.ops_of(scenario, "solo"), "main",
                               history.ops_of(scenario, "main"), set(solo.variants), ctx, result)
    _id_provenance([o for o in history.ops if o.run in ("main", "solo")], result)
    _decide(result, "solo-replay comparisons")
    if warm and result.verdict is Verdict.PASS:
        # Fail closed: a reference that may itself have reused cache cannot show transparency.
        result.verdict = Verdict.UNKNOWN
        result.notes.append(f"no cache salt or reset could be verified on the target, so the solo reference of "
                            f"{', '.join(warm)} may have run warm")
    return result
