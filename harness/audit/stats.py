"""Statistics of the timing audit (pure: samples in, p-values and decisions out).

Four arms of time-to-first-token samples are compared, one round adding one sample to each:

- `probe`: the attacker sends the victim's exact prompt (a leak makes it faster);
- `control`: the attacker re-sends its own prompt (a same-tenant hit: the positive control);
- `miss`: a fresh prompt (a cold prefill);
- `miss2`: a second arm of fresh prompts, compared with `miss` as an A/A null to catch drift.

Each "faster" comparison runs two one-sided tests, Kolmogorov-Smirnov (`ks_2samp`) and
Mann-Whitney U, both exact for small samples; the A/A comparison runs both tests two-sided. All
six p-values of one look form one family, corrected by Holm's step-down. Testing after every round
(sequential sampling) would inflate the error rate, so each look is run at `alpha / looks`
(Bonferroni over the most looks the plan can take): the chance of any false detection over the
whole run stays at most `alpha`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from statistics import median
from typing import Any

from scipy import stats as _st

PROBE, CONTROL, MISS, MISS2 = "probe", "control", "miss", "miss2"
ARMS: tuple[str, ...] = (PROBE, CONTROL, MISS, MISS2)
KS, MW = "ks", "mann-whitney"


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the input order: the i-th smallest p times (m - i), made
    monotone (never below an earlier adjusted value) and capped at 1."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def holm_reject(pvalues: Sequence[float], alpha: float) -> list[bool]:
    """Which hypotheses Holm's step-down rejects at family-wise level `alpha`."""
    return [p <= alpha for p in holm(pvalues)]


def _has_ties(*samples: Sequence[float]) -> bool:
    pooled = [v for s in samples for v in s]
    return len(set(pooled)) < len(pooled)


def _ks(a: Sequence[float], b: Sequence[float], alternative: str) -> tuple[float, float]:
    """`ks_2samp`, exact where scipy can (it falls back to the asymptotic p by itself, with a
    warning we silence: that happens where p is near 1, e.g. two-sided at a small D)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="ks_2samp: Exact calculation unsuccessful")
        r = _st.ks_2samp(a, b, alternative=alternative, method="auto")
    return float(r.statistic), float(r.pvalue)


def ks_faster(sample: Sequence[float], reference: Sequence[float]) -> tuple[float, float]:
    """One-sided KS: is `sample` stochastically smaller (faster) than `reference`? (D+, p).

    `ks_2samp(x, y, alternative="greater")` asks whether the CDF of x lies above that of y
    somewhere, which is x tending to smaller values."""
    return _ks(sample, reference, "greater")


def mw_faster(sample: Sequence[float], reference: Sequence[float]) -> tuple[float, float]:
    """One-sided Mann-Whitney U (alternative 'less': `sample` faster); exact unless there are ties."""
    method = "asymptotic" if _has_ties(sample, reference) else "exact"
    r = _st.mannwhitneyu(sample, reference, alternative="less", method=method)
    return float(r.statistic), float(r.pvalue)


def ks_differ(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Two-sided KS (the A/A comparison)."""
    return _ks(a, b, "two-sided")


def mw_differ(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Two-sided Mann-Whitney U (the A/A comparison)."""
    method = "asymptotic" if _has_ties(a, b) else "exact"
    r = _st.mannwhitneyu(a, b, alternative="two-sided", method=method)
    return float(r.statistic), float(r.pvalue)


@dataclass(frozen=True)
class Effect:
    """How much faster `sample` is than `reference`, in the samples' unit (seconds)."""

    median_sample: float
    median_reference: float
    median_diff: float
    """median(reference) - median(sample): positive when the sample is faster."""
    share_faster_than_fastest: float
    """Share of the sample below the reference's minimum: how often one probe alone tells."""


def effect(sample: Sequence[float], reference: Sequence[float]) -> Effect:
    ms, mr = median(sample), median(reference)
    fastest = min(reference)
    share = sum(1 for v in sample if v < fastest) / len(sample)
    return Effect(ms, mr, mr - ms, share)


@dataclass
class TestResult:
    """One hypothesis test of one comparison, with its Holm-adjusted p-value at one look."""

    comparison: str
    test: str
    statistic: float
    p: float
    p_holm: float = 1.0
    rejected: bool = False


@dataclass
class Comparison:
    """`sample` arm against `reference` arm: one-sided 'faster', or two-sided 'differ' (A/A)."""

    name: str
    sample: str
    reference: str
    alternative: str
    tests: list[TestResult]
    effect: Effect

    @property
    def detected(self) -> bool:
        """At least one of its tests rejected after Holm."""
        return any(t.rejected for t in self.tests)

    @property
    def min_p(self) -> float:
        return min(t.p for t in self.tests)

    @property
    def min_p_holm(self) -> float:
        return min(t.p_holm for t in self.tests)


# The three comparisons of a look: (name, sample arm, reference arm, alternative).
COMPARISONS: tuple[tuple[str, str, str, str], ...] = (
    ("probe<miss", PROBE, MISS, "faster"),
    ("control<miss", CONTROL, MISS, "faster"),
    ("miss2~miss", MISS2, MISS, "differ"),
)


class Decision(StrEnum):
    """What one look says about sampling on."""

    CONTINUE = "continue"
    PROBE_DETECTED = "probe-detected"
    """The probe is faster than a miss at alpha: the attacker can tell (stop)."""
    CLEAR = "control-detected-probe-clear"
    """The control is detected at alpha and the probe shows no sign of it (stop)."""
    AA_REJECTED = "aa-rejected"
    """Two arms of fresh prompts differ: the measurement is not trustworthy (stop)."""
    EXHAUSTED = "max-probes"
    """The most probes per arm were used without a clear decision."""


@dataclass(frozen=True)
class SequentialPlan:
    """When to look and at which level: from `min_probes` to `max_probes` per arm, one look per round."""

    alpha: float = 1e-6
    min_probes: int = 5
    max_probes: int = 30
    clear_p: float = 0.05
    """Stop early with 'probe clear' only when both probe tests' raw p-values are at least this."""

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if not 2 <= self.min_probes <= self.max_probes:
            raise ValueError(f"need 2 <= min_probes <= max_probes, got {self.min_probes}, {self.max_probes}")

    @property
    def looks(self) -> int:
        return self.max_probes - self.min_probes + 1

    @property
    def alpha_per_look(self) -> float:
        return self.alpha / self.looks


@dataclass
class Look:
    """Everything computed at one look: per-arm sample size, comparisons, flags and the decision."""

    n: int
    alpha: float
    comparisons: dict[str, Comparison]
    decision: Decision = Decision.CONTINUE

    @property
    def probe(self) -> Comparison:
        return self.comparisons["probe<miss"]

    @property
    def control(self) -> Comparison:
        return self.comparisons["control<miss"]

    @property
    def aa(self) -> Comparison:
        return self.comparisons["miss2~miss"]

    @property
    def probe_detected(self) -> bool:
        return self.probe.detected

    @property
    def control_detected(self) -> bool:
        return self.control.detected

    @property
    def aa_rejected(self) -> bool:
        return self.aa.detected

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "alpha": self.alpha,
            "decision": self.decision.value,
            "probe_detected": self.probe_detected,
            "control_detected": self.control_detected,
            "aa_rejected": self.aa_rejected,
            "comparisons": {
                name: {
                    "sample": c.sample, "reference": c.reference, "alternative": c.alternative,
                    "detected": c.detected,
                    "tests": [asdict(t) for t in c.tests],
                    "effect": asdict(c.effect),
                }
                for name, c in self.comparisons.items()
            },
        }


def analyse(arms: Mapping[str, Sequence[float]], alpha: float) -> Look:
    """Run the six tests on the arms (cut to equal length), Holm-correct them at `alpha`."""
    n = min(len(arms[a]) for a in ARMS)
    if n < 2:
        raise ValueError("every arm needs at least 2 samples")
    cut = {a: list(arms[a][:n]) for a in ARMS}
    comparisons: dict[str, Comparison] = {}
    for name, s, r, alt in COMPARISONS:
        if alt == "faster":
            runs = [(KS, ks_faster(cut[s], cut[r])), (MW, mw_faster(cut[s], cut[r]))]
        else:
            runs = [(KS, ks_differ(cut[s], cut[r])), (MW, mw_differ(cut[s], cut[r]))]
        tests = [TestResult(name, test, stat, p) for test, (stat, p) in runs]
        comparisons[name] = Comparison(name, s, r, alt, tests, effect(cut[s], cut[r]))
    family = [t for c in comparisons.values() for t in c.tests]
    for t, adj in zip(family, holm([t.p for t in family]), strict=False):
        t.p_holm = adj
        t.rejected = adj <= alpha
    return Look(n, alpha, comparisons)


def decide(look: Look, plan: SequentialPlan) -> Decision:
    """Stop or go on after a look: A/A rejected, probe detected, or control detected with the probe
    clear (both raw probe p-values >= `clear_p`) stop; at `max_probes` the run is exhausted."""
    if look.aa_rejected:
        return Decision.AA_REJECTED
    if look.probe_detected:
        return Decision.PROBE_DETECTED
    if look.control_detected and look.probe.min_p >= plan.clear_p:
        return Decision.CLEAR
    if look.n >= plan.max_probes:
        return Decision.EXHAUSTED
    return Decision.CONTINUE


def look_at(arms: Mapping[str, Sequence[float]], plan: SequentialPlan) -> Look:
    """One sequential look at the arms as they stand (at the plan's per-look alpha)."""
    lk = analyse(arms, plan.alpha_per_look)
    lk.decision = decide(lk, plan)
    return lk


@dataclass
class Replay:
    """The sequential procedure replayed on pre-drawn samples: every look and the last one."""

    looks: list[Look] = field(default_factory=list)

    @property
    def final(self) -> Look:
        return self.looks[-1]


def replay(arms: Mapping[str, Sequence[float]], plan: SequentialPlan) -> Replay:
    """Run the sequential procedure on samples drawn in advance (round i adds element i of each
    arm): look from `min_probes` on, stop at the first decision other than CONTINUE."""
    available = min(len(arms[a]) for a in ARMS)
    out = Replay()
    for n in range(plan.min_probes, min(plan.max_probes, available) + 1):
        lk = look_at({a: arms[a][:n] for a in ARMS}, plan)
        out.looks.append(lk)
        if lk.decision is not Decision.CONTINUE:
            break
    if not out.looks:
        raise ValueError(f"need at least {plan.min_probes} samples per arm, have {available}")
    return out


def separation_p(n: int) -> float:
    """The smallest one-sided p-value either test can give with n samples per arm (complete
    separation): 1 / C(2n, n). Tells how many probes per arm a given alpha needs at least."""
    return 1.0 / math.comb(2 * n, n)


def fewest_probes(plan: SequentialPlan, family: int = 2 * len(COMPARISONS)) -> int | None:
    """The fewest probes per arm at which even a completely separated arm can be detected (its
    smaller p-value must pass Holm's first step, alpha_per_look / family); None beyond max_probes."""
    for n in range(plan.min_probes, plan.max_probes + 1):
        if separation_p(n) * family <= plan.alpha_per_look:
            return n
    return None
