"""The timing audit's statistics on synthetic samples with known answers (no server, no clock)."""

from __future__ import annotations

import math
import random

import pytest

from harness.audit.stats import (
    CONTROL,
    KS,
    MISS,
    MISS2,
    MW,
    PROBE,
    Decision,
    SequentialPlan,
    analyse,
    effect,
    fewest_probes,
    holm,
    holm_reject,
    ks_differ,
    ks_faster,
    look_at,
    mw_faster,
    replay,
    separation_p,
)


def _draws(seed: int, n: int, centre: float = 0.33, spread: float = 0.25) -> list[float]:
    """Seeded log-normal draws, shaped like cold-prefill times (seconds)."""
    rng = random.Random(seed)
    return [centre * math.exp(rng.gauss(0.0, spread)) for _ in range(n)]


def _arms(probe: list[float], control: list[float], miss: list[float], miss2: list[float]) -> dict[str, list[float]]:
    return {PROBE: probe, CONTROL: control, MISS: miss, MISS2: miss2}


# --- Holm -------------------------------------------------------------------------------------------


def test_holm_matches_hand_computed_values() -> None:
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm_reject([0.01, 0.04, 0.03, 0.005], 0.05) == [True, False, False, True]


def test_holm_is_step_down_and_stops_at_the_first_acceptance() -> None:
    # 0.02*3 = 0.06 > 0.05 stops the procedure, although 0.04 alone would pass alpha / 1.
    assert holm_reject([0.02, 0.03, 0.04], 0.05) == [False, False, False]
    # 0.001*3, 0.02*2, 0.021*1 (monotone: 0.04): all at or below 0.05.
    assert holm([0.001, 0.02, 0.021]) == pytest.approx([0.003, 0.04, 0.04])
    assert holm_reject([0.001, 0.02, 0.021], 0.05) == [True, True, True]


def test_holm_edge_cases() -> None:
    assert holm([]) == []
    assert holm([0.3]) == [0.3]
    assert holm([0.6, 0.7]) == [1.0, 1.0]  # capped at 1
    assert holm([0.01, 0.01]) == pytest.approx([0.02, 0.02])  # ties keep the order


# --- the tests and their direction -----------------------------------------------------------------


@pytest.mark.parametrize("n", [5, 10, 20])
def test_separated_samples_give_the_exact_separation_p(n: int) -> None:
    fast = [0.05 + 0.001 * i for i in range(n)]
    slow = [0.30 + 0.001 * i for i in range(n)]
    for test in (ks_faster, mw_faster):
        _stat, p = test(fast, slow)
        assert p == pytest.approx(1 / math.comb(2 * n, n), rel=1e-6)
        assert p == pytest.approx(separation_p(n), rel=1e-6)
        assert test(slow, fast)[1] > 0.99  # one-sided: slower is never "faster"


def test_identical_distributions_are_not_detected() -> None:
    a, b = _draws(1, 30), _draws(2, 30)
    assert ks_faster(a, b)[1] > 1e-3 and mw_faster(a, b)[1] > 1e-3
    assert ks_differ(a, b)[1] > 1e-3


def test_ties_do_not_break_the_tests() -> None:
    a = [0.1, 0.2, 0.2, 0.3, 0.3]
    assert 0.0 < mw_faster(a, list(a))[1] <= 1.0
    assert 0.0 < ks_faster(a, list(a))[1] <= 1.0


def test_effect_sizes() -> None:
    e = effect([0.05, 0.06, 0.40], [0.30, 0.32, 0.50])
    assert e.median_sample == pytest.approx(0.06)
    assert e.median_reference == pytest.approx(0.32)
    assert e.median_diff == pytest.approx(0.26)
    assert e.share_faster_than_fastest == pytest.approx(2 / 3)


# --- one look ---------------------------------------------------------------------------------------


def test_clearly_separated_probe_and_control_are_detected() -> None:
    n = 20
    hits = [0.05 + 0.002 * i for i in range(n)]
    look = analyse(_arms(hits, list(reversed(hits)), _draws(3, n), _draws(4, n)), alpha=1e-6)
    assert look.probe_detected and look.control_detected and not look.aa_rejected
    assert {t.test for t in look.probe.tests} == {KS, MW}
    assert look.probe.effect.share_faster_than_fastest == 1.0


def test_probe_like_a_miss_is_not_detected_while_the_control_is() -> None:
    n = 20
    look = analyse(_arms(_draws(5, n), [0.05 + 0.002 * i for i in range(n)], _draws(6, n), _draws(7, n)), alpha=1e-6)
    assert look.control_detected
    assert not look.probe_detected and not look.aa_rejected


def test_aa_null_rejects_a_drifting_second_miss_arm() -> None:
    n = 20
    miss = [0.30 + 0.001 * i for i in range(n)]
    drifted = [0.60 + 0.001 * i for i in range(n)]
    same = analyse(_arms(_draws(8, n), _draws(9, n), _draws(10, n), _draws(11, n)), alpha=1e-6)
    assert not same.aa_rejected
    look = look_at(_arms(_draws(8, n), _draws(9, n), miss, drifted), SequentialPlan(alpha=1e-3))
    assert look.aa_rejected
    assert look.decision is Decision.AA_REJECTED  # it takes precedence over everything


def test_holm_runs_over_the_whole_family_of_six() -> None:
    n = 10
    hits = [0.05 + 0.001 * i for i in range(n)]
    look = analyse(_arms(_draws(12, n), hits, _draws(13, n), _draws(14, n)), alpha=1.0)
    ps = [t.p for c in look.comparisons.values() for t in c.tests]
    adjusted = [t.p_holm for c in look.comparisons.values() for t in c.tests]
    assert len(ps) == 6 and adjusted == pytest.approx(holm(ps))
    assert look.control.min_p_holm == pytest.approx(6 * separation_p(n))


# --- sequential sampling ----------------------------------------------------------------------------


def _separated(n: int, base: float) -> list[float]:
    return [base + 0.001 * i for i in range(n)]


def test_fewest_probes_is_where_complete_separation_first_passes_holm() -> None:
    plan = SequentialPlan()  # alpha 1e-6, looks 5..30: 26 looks
    assert plan.alpha_per_look == pytest.approx(1e-6 / 26)
    n = fewest_probes(plan)
    assert n == 16
    assert 6 / math.comb(2 * n, n) <= plan.alpha_per_look < 6 / math.comb(2 * (n - 1), n - 1)
    assert fewest_probes(SequentialPlan(alpha=1e-30)) is None


def test_sequential_stops_as_soon_as_the_control_is_clear() -> None:
    plan = SequentialPlan()
    n_max = plan.max_probes
    miss = _separated(n_max, 0.30)
    probe = [v + 0.0005 for v in miss]  # interleaved with the misses, a hair slower: no sign of a hit
    out = replay(_arms(probe, _separated(n_max, 0.05), miss, list(reversed(_separated(n_max, 0.30)))), plan)
    final = out.final
    assert final.decision is Decision.CLEAR
    assert final.n == fewest_probes(plan)
    assert [lk.n for lk in out.looks] == list(range(plan.min_probes, final.n + 1))
    assert all(lk.decision is Decision.CONTINUE for lk in out.looks[:-1])


def test_sequential_stops_as_soon_as_the_probe_is_detected() -> None:
    plan = SequentialPlan()
    n_max = plan.max_probes
    hits = _separated(n_max, 0.05)
    out = replay(_arms(hits, list(hits), _separated(n_max, 0.30), _separated(n_max, 0.31)), plan)
    assert out.final.decision is Decision.PROBE_DETECTED
    assert out.final.n == fewest_probes(plan)


def test_sequential_runs_to_the_end_without_signal() -> None:
    plan = SequentialPlan(max_probes=20)
    out = replay(_arms(_draws(20, 25), _draws(21, 25), _draws(22, 25), _draws(23, 25)), plan)
    assert out.final.decision is Decision.EXHAUSTED
    assert out.final.n == 20
    assert not any(lk.probe_detected or lk.control_detected or lk.aa_rejected for lk in out.looks)


def test_probe_not_clear_keeps_sampling() -> None:
    """A control detected next to a probe with a small (but not significant) p-value is no reason to stop."""
    plan = SequentialPlan(alpha=1e-6, clear_p=0.05)
    n = 20
    miss = _separated(n, 0.30)
    probe = [v - 0.0005 if i % 2 else v - 0.5 for i, v in enumerate(miss)]  # half the probes fast
    look = look_at(_arms(probe, _separated(n, 0.05), miss, _separated(n, 0.3005)), plan)
    assert look.control_detected and not look.probe_detected and look.probe.min_p < plan.clear_p
    assert look.decision is Decision.CONTINUE


def test_plan_and_replay_validate_their_input() -> None:
    with pytest.raises(ValueError):
        SequentialPlan(alpha=0.0)
    with pytest.raises(ValueError):
        SequentialPlan(min_probes=10, max_probes=5)
    with pytest.raises(ValueError):
        replay(_arms([0.1] * 3, [0.1] * 3, [0.1] * 3, [0.1] * 3), SequentialPlan())
