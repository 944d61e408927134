"""Judging the output checks against the noise profile (docs/design.md, "Comparing two generations").

- `judging_tolerance`: the near-tie bound a comparison uses. An explicit `--tolerance` (any value
  but `DEFAULT_TOLERANCE`) overrides; else the profile's bound: the exact rule on a deterministic
  target (or one without A/A runs), `MARGIN_SLACK` times the largest A/A margin on a noisy one.
- `rate_test`: on a noisy target, the counterfactual divergence rate must not exceed the A/A rate by
  more than chance (Fisher's exact test, one-sided, at `ALPHA`); and the run must have the power to
  see an extra divergence rate of `MAX_MISSED_LEAK_RATE`, else the check is UNKNOWN.
"""

from __future__ import annotations

from harness.calibration.profile import NoiseProfile
from harness.calibration.stats import ALPHA, POWER, any_change_rate, fisher_greater, min_detectable_rate
from harness.checks.compare import DEFAULT_TOLERANCE
from harness.verdict import CheckResult, Violation

MIN_AA_DIVERGENCES = 20
"""A/A divergences needed before their largest margin bounds the noise: from n of them, the next
noise flip exceeds the largest with probability about 1/(n+1). With fewer, a divergence beyond
`MARGIN_SLACK` times that margin (its token still in the reference's top logprobs) is neither
shown to be noise nor shown to be a leak: the check is UNKNOWN, never FAIL on a guess."""
MARGIN_KINDS = frozenset({"reference-margin", "observed-margin"})
"""Divergences that are violations only because a margin exceeded the bound."""
MAX_MISSED_LEAK_RATE = 0.3
"""The leak rate a run claims to exclude: a leak that makes at least this fraction of the compared
conversations diverge (beyond the noise) must be detected with probability `POWER`; a run that
cannot is UNKNOWN."""


def is_override(tolerance: float) -> bool:
    """A tolerance set by hand (anything but the default) replaces the calibrated bound."""
    return tolerance != DEFAULT_TOLERANCE


def judging_tolerance(profile: NoiseProfile, tolerance: float, result: CheckResult) -> float:
    """The near-tie bound for this run's comparisons, recorded in the result's evidence."""
    bound = tolerance if is_override(tolerance) else profile.margin_bound(tolerance)
    ev = result.evidence
    ev["margin_bound"] = bound
    if profile.calibrated:
        ev["aa_conversations"], ev["aa_diverged"] = profile.conversations, profile.diverged
    if is_override(tolerance):
        result.notes.append(f"near-tie bound {tolerance:g} nats set by hand (--tolerance), not from the A/A runs")
    elif profile.calibrated and not profile.deterministic:
        result.notes.append(
            f"target is nondeterministic: {profile.diverged} of {profile.conversations} A/A conversations diverged; "
            f"near-tie bound {bound:.3g} nats ({len(profile.margins) // 2} A/A divergences, largest margin "
            f"{max(profile.margins, default=0.0):.3g})")
    return bound


def rate_test(profile: NoiseProfile, result: CheckResult, drifted: list[list[str]]) -> None:
    """Test the counterfactual divergence rate against the A/A rate and report the run's power."""
    ev = result.evidence
    n1, k1 = int(ev.get("conversations", 0)), int(ev.get("conversations_diverged", 0))
    if not profile.calibrated or profile.deterministic:
        rate = any_change_rate(n1)
        if rate is not None:
            ev["min_detectable_leak_rate"] = round(rate, 4)
        return
    n0, k0 = profile.conversations, profile.diverged
    p = fisher_greater(k1, n1, k0, n0)
    ev["cf_rate"], ev["aa_rate"] = round(k1 / n1, 4) if n1 else 0.0, round(profile.rate, 4)
    ev["rate_p_value"], ev["alpha"] = round(p, 6), ALPHA
    detectable = min_detectable_rate(n1, n0, profile.rate) if n1 else None
    if detectable is not None:
        ev["min_detectable_leak_rate"] = round(detectable, 4)
    if p <= ALPHA:
        ops = [i for pair in drifted for i in pair]
        result.violations.append(Violation(
            check="counterfactual-isolation", scenario="(all)", users=[], op_ids=ops,
            message=(f"counterfactual runs diverged in {k1} of {n1} conversations against {k0} of {n0} in the "
                     f"A/A runs: more than the target's noise explains (Fisher's exact test, one-sided, "
                     f"p = {p:.2g} <= {ALPHA:g})"),
            details={"divergence": "rate", "cf_diverged": k1, "cf_conversations": n1, "aa_diverged": k0,
                     "aa_conversations": n0, "p_value": p, "alpha": ALPHA},
        ))
    if detectable is None or detectable > MAX_MISSED_LEAK_RATE:
        ev["underpowered"] = 1
        seen = "no extra rate at all" if detectable is None else f"only an extra rate of {detectable:.2f}"
        result.notes.append(
            f"not enough power: with {n1} counterfactual and {n0} A/A conversations at an A/A rate of "
            f"{profile.rate:.2f}, the rate test sees {seen} with probability {POWER:g}; the run claims to "
            f"exclude {MAX_MISSED_LEAK_RATE:g}")


def unbounded_margins(profile: NoiseProfile, tolerance: float, result: CheckResult) -> None:
    """On a noisy target whose A/A runs showed fewer than MIN_AA_DIVERGENCES divergences, the
    margin violations of `result` are taken out (kept in the evidence and notes): the bound they
    exceeded rests on too few samples. The check cannot PASS then (see `MIN_AA_DIVERGENCES`)."""
    if is_override(tolerance) or not profile.calibrated or profile.deterministic:
        return
    samples = len(profile.margins) // 2
    if samples >= MIN_AA_DIVERGENCES:
        return
    moved = [v for v in result.violations if v.details.get("divergence") in MARGIN_KINDS]
    if not moved:
        return
    result.violations = [v for v in result.violations if v not in moved]
    result.evidence["margin_unbounded"] = len(moved)
    result.notes.append(
        f"{len(moved)} divergence(s) beyond the near-tie bound only by their margin (first: {moved[0].message}); "
        f"the bound rests on {samples} A/A divergence(s), fewer than {MIN_AA_DIVERGENCES}: neither shown to be "
        "noise nor shown to be a leak")

