"""The two output properties, each comparing a conversation against a reference run.

- `counterfactual-isolation` (the mission's property): a user whose own content was held fixed
  gets the same tokens when every other user's private content is re-drawn.
- `cache-transparency`: each conversation replayed alone with no cache reuse gives the same
  tokens as in the busy run.
A conversation is compared turn by turn up to its first divergence; later turns have different
prompts and are not comparable. Near-tie drift is counted apart from violations.

Both are judged against the target's own noise, measured by its A/A runs (docs/design.md,
"Comparing two generations"): the near-tie bound comes from the noise profile, and on a target that
showed noise the counterfactual divergence rate must not exceed the A/A rate by more than chance.
"""

from __future__ import annotations

from collections import Counter

from harness.checks.base import CheckContext, Need, check
from harness.checks.compare import compare_tokens
from harness.history.record import History, Operation, Role, RunInfo
from harness.plan.cover import pairs_present
from harness.verdict import CheckResult, Verdict, Violation


def _compare_conversations(
    name: str, scenario: str, ref_run: str, ref_ops: list[Operation], obs_run: str, obs_ops: list[Operation],
    users: set[str], tolerance: float, result: CheckResult, diverged: list[list[str]] | None = None,
) -> set[str]:
    """Compare each user's conversation turn by turn up to its first divergence (near-tie bound
    `tolerance`); returns the users whose first turn was compared (so a change in their tokens
    would have been seen). Counts conversations compared and diverged; appends the two requests of
    each near-tie divergence to `diverged`."""
    ref = History.conversations(ref_ops)
    obs = History.conversations(obs_ops)
    seen: set[str] = set()
    ev = result.evidence
    for user in sorted(users):
        for r, o in zip(ref.get(user, []), obs.get(user, []), strict=False):
            if not (r.ok and o.ok):
                result.notes.append(f"{scenario}/{user} turn {r.turn}: not compared (a request failed)")
                break
            cmp = compare_tokens(r, o, tolerance)
            if cmp.outcome == "incomparable":
                ev["incomparable"] = ev.get("incomparable", 0) + 1
                result.notes.append(f"{scenario}/{user} turn {r.turn} ({ref_run} vs {obs_run}): not comparable: "
                                    f"{cmp.reason}")
                break
            result.exercised += 1
            if user not in seen:
                ev["conversations"] = ev.get("conversations", 0) + 1
            seen.add(user)
            ev["tokens_compared"] = ev.get("tokens_compared", 0) + cmp.tokens_compared
            if cmp.outcome == "equal":
                continue
            ev["conversations_diverged"] = ev.get("conversations_diverged", 0) + 1
            if cmp.outcome == "drift":
                result.drift += 1
                if diverged is not None:
                    diverged.append([r.op_id, o.op_id])
            else:
                result.violations.append(Violation(
                    check=name, scenario=scenario, users=[user], op_ids=[r.op_id, o.op_id],
                    message=(f"user {user!r} turn {r.turn}: {obs_run} output differs from {ref_run} at token "
                             f"{cmp.position} ({cmp.reference_token} -> {cmp.observed_token}): {cmp.reason}"),
                    details={"position": cmp.position, "reference_token": cmp.reference_token,
                             "observed_token": cmp.observed_token, "margin": cmp.margin,
                             "observed_margin": cmp.observed_margin, "divergence": cmp.kind,
                             "reference_run": ref_run, "observed_run": obs_run, "turn": r.turn},
                ))
            break  # later turns of this conversation have different prompts
    return seen


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
    elif result.evidence.get("margin_unbounded"):
        result.verdict = Verdict.UNKNOWN  # fail closed: divergences neither shown noise nor shown leaks
    elif result.exercised == 0:
        result.verdict = Verdict.UNKNOWN
        result.notes.append(f"no {what} could be made")
    elif result.evidence.get("incomparable"):
        # Fail closed: an output without token ids may differ from its reference unseen.
        result.verdict = Verdict.UNKNOWN
        result.notes.append(f"{result.evidence['incomparable']} conversation(s) could not be compared "
                            "(outputs without token ids)")
    else:
        result.verdict = Verdict.PASS
    return result


def _coverage(scenario: str, main: RunInfo | None, observed: set[tuple[str, str]], result: CheckResult) -> None:
    """Count the scenario's cross-tenant (victim, source) pairs and those some re-run made observable."""
    if main is None:
        return
    present = pairs_present(main.tenants)
    covered = present & observed
    ev = result.evidence
    ev["pairs_present"] = ev.get("pairs_present", 0) + len(present)
    ev["pairs_observable"] = ev.get("pairs_observable", 0) + len(covered)
    if len(covered) < len(present):
        missing = sorted(present - covered)
        result.notes.append(f"{scenario}: {len(present) - len(covered)} of {len(present)} cross-tenant "
                            f"(victim, source) pairs were never observable, e.g. {missing[:3]}")


@check("counterfactual-isolation",
       "a user's outputs do not change when other users' private content is re-drawn (shared prefixes kept)",
       needs=(Need.TOKEN_IDS,), compares_outputs=True)
def counterfactual(history: History, ctx: CheckContext) -> CheckResult:
    from harness.calibration.judge import judging_tolerance, rate_test, unbounded_margins  # imports harness.checks
    from harness.calibration.profile import noise_profile

    result = CheckResult("", Verdict.UNKNOWN)
    profile = noise_profile(history)
    tolerance = judging_tolerance(profile, ctx.tolerance, result)
    drifted: list[list[str]] = []
    runs_of: dict[str, list[RunInfo]] = {}  # one pass over the runs, not one per scenario
    for info in history.runs:
        runs_of.setdefault(info.scenario, []).append(info)
    for scenario in history.scenarios():
        main = history.ops_of(scenario, "main")
        main_info = history.run_info(scenario, "main")
        observed: set[tuple[str, str]] = set()
        for info in runs_of.get(scenario, []):
            if Role.of_run(info.run) is not Role.COUNTERFACTUAL:
                continue
            fixed = {u for u, v in info.variants.items() if v == 0}
            redrawn = set(info.variants) - fixed
            seen = _compare_conversations("counterfactual-isolation", scenario, "main", main, info.run,
                                          history.ops_of(scenario, info.run), fixed, tolerance, result, drifted)
            observed |= {(v, s) for v in seen for s in redrawn}
        _coverage(scenario, main_info, observed, result)
    _id_provenance([o for o in history.ops if o.role in (Role.MAIN, Role.COUNTERFACTUAL)], result)
    if not result.evidence.get("pairs_present") and not result.exercised and not result.violations:
        result.verdict = Verdict.NOT_APPLICABLE
        result.notes.append("no scenario has users of two tenants: no cross-tenant influence to observe")
        return result
    rate_test(profile, result, drifted)
    unbounded_margins(profile, ctx.tolerance, result)
    _decide(result, "counterfactual comparisons")
    if result.verdict is Verdict.PASS and result.evidence.get("pairs_observable", 0) < result.evidence.get(
            "pairs_present", 0):
        result.verdict = Verdict.UNKNOWN  # fail closed: a pair never observed was not shown to be isolated
    if result.verdict is Verdict.PASS and result.evidence.get("underpowered"):
        result.verdict = Verdict.UNKNOWN  # fail closed: the run could have missed the leaks it claims to exclude
        result.evidence["unknown_for_power_only"] = 1  # it held otherwise (the selftest's benign rows read this)
    return result


@check("cache-transparency",
       "each conversation replayed alone with no cache reuse gives the same tokens as in the busy run",
       needs=(Need.TOKEN_IDS, Need.COLD_REFERENCE), compares_outputs=True)
def transparency(history: History, ctx: CheckContext) -> CheckResult:
    from harness.calibration.judge import judging_tolerance, unbounded_margins  # imports harness.checks itself
    from harness.calibration.profile import noise_profile

    result = CheckResult("", Verdict.UNKNOWN)
    profile = noise_profile(history)
    tolerance = judging_tolerance(profile, ctx.tolerance, result)
    warm = []
    for scenario in history.scenarios():
        solo = history.run_info(scenario, "solo")
        if solo is None:
            continue
        if solo.isolation == "warm":
            warm.append(scenario)
        _compare_conversations("cache-transparency", scenario, "solo", history.ops_of(scenario, "solo"), "main",
                               history.ops_of(scenario, "main"), set(solo.variants), tolerance, result)
    _id_provenance([o for o in history.ops if o.role in (Role.MAIN, Role.SOLO)], result)
    unbounded_margins(profile, ctx.tolerance, result)
    _decide(result, "solo-replay comparisons")
    if warm and result.verdict is Verdict.PASS:
        # Fail closed: a reference that may itself have reused cache cannot show transparency.
        result.verdict = Verdict.UNKNOWN
        result.notes.append(f"no cache salt or reset could be verified on the target, so the solo reference of "
                            f"{', '.join(warm)} may have run warm")
    return result
