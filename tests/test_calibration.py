"""A/A calibration and judging against the noise (docs/design.md, "Comparing two generations"):
the exact statistics, the noise profile read from A/A runs, the output checks judged against it
(each rule shown to FAIL on a faulty history and to hold on a noisy but honest one), and the
engine's A/A repeats stopping early on a deterministic target."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console
from scipy.stats import fisher_exact

from bench.fake_server import FakeServer, SpawnedServer
from harness import engine
from harness.calibration.judge import MAX_MISSED_LEAK_RATE, MIN_AA_DIVERGENCES
from harness.calibration.profile import MARGIN_SLACK, identical, noise_profile
from harness.calibration.stats import any_change_rate, fisher_greater, min_detectable_rate, power
from harness.checks.base import CheckContext, get
from harness.checks.compare import DEFAULT_TOLERANCE
from harness.history.record import CalibrationRun, History, Operation, Record, Role
from harness.scenario.io import load_scenario
from harness.stacks.external import ExternalStack
from harness.verdict import Verdict
from tests.factories import info, op

LIBRARY = Path(__file__).resolve().parents[1] / "scenarios"
CTX = CheckContext(DEFAULT_TOLERANCE)
A, B, X = 11, 12, 99  # the chosen token, its near-tied runner-up, a token in no top logprobs


# --- the statistics ----------------------------------------------------------------------------


@pytest.mark.parametrize(("k1", "n1", "k0", "n0"), [(5, 20, 3, 60), (0, 10, 2, 10), (9, 30, 1, 90), (4, 4, 0, 4)])
def test_fisher_greater_is_scipys_one_sided_fisher(k1: int, n1: int, k0: int, n0: int) -> None:
    expected = fisher_exact([[k1, n1 - k1], [k0, n0 - k0]], alternative="greater").pvalue
    assert fisher_greater(k1, n1, k0, n0) == pytest.approx(expected, abs=1e-12)


def test_power_grows_with_the_leak_and_min_detectable_rate_inverts_it() -> None:
    assert power(40, 120, 0.1, 0.1) <= 0.01 + 1e-9  # under the null it rejects at most alpha
    assert power(40, 120, 0.1, 0.2) < power(40, 120, 0.1, 0.4) < power(40, 120, 0.1, 0.6)
    d = min_detectable_rate(40, 120, 0.1)
    assert d is not None
    assert power(40, 120, 0.1, 0.1 + d) >= 0.8 > power(40, 120, 0.1, 0.1 + d - 0.01)
    assert min_detectable_rate(2, 2, 0.5) is None  # two conversations cannot show anything at 1%
    assert any_change_rate(40) == pytest.approx(1 - 0.2 ** (1 / 40))


# --- histories ------------------------------------------------------------------------------------


def _top(chosen: int, other: int, margin: float) -> dict[int, float]:
    return {chosen: -0.5, other: -0.5 - margin}


def _conv(run: str, user: str, token: int, margin: float = 0.05, scenario: str = "s") -> Operation:
    """A one-token conversation: `token` chosen at a near-tie of `margin` nats between A and B
    (X: a token outside the top logprobs)."""
    other = B if token == A else A
    return op(run, user, [token], tops=[_top(token, other, margin) if token in (A, B) else {X: -0.1, A: -3.0}],
              tenant=f"t{int(user[1:]) % 2}", scenario=scenario)


def _noisy_history(users: int, aa_repeats: int, aa_flips: int, cf_flips: int, *, cf_token: int = B,
                   cf_margin: float = 0.05, aa_margin: float = 0.05) -> History:
    """Main run of `users` users (two tenants), `aa_repeats` A/A repeats with `aa_flips`
    conversations diverged in total, and two counterfactual runs (each holding one tenant fixed and
    re-drawing the other) with `cf_flips` fixed users' conversations diverged (to `cf_token` at
    `cf_margin`)."""
    names = [f"u{i}" for i in range(users)]
    tenants = {u: f"t{int(u[1:]) % 2}" for u in names}
    recs: list[Record] = [info("main", dict.fromkeys(names, 0), tenants=tenants)]
    recs += [_conv("main", u, A, aa_margin) for u in names]
    flips = aa_flips
    for i in range(1, aa_repeats + 1):
        run = f"aa-{i}"
        recs.append(info(run, dict.fromkeys(names, 0), tenants=tenants))
        for u in names:
            recs.append(_conv(run, u, B if flips > 0 else A, aa_margin))
            flips -= 1
        recs.append(CalibrationRun(run=run, scenario="s", repeat=i))
    flips = cf_flips
    for i, fixed in enumerate(("t0", "t1")):  # each tenant held fixed once, the other re-drawn
        recs.append(info(f"cf-{i}", {u: 0 if tenants[u] == fixed else 1 for u in names}, tenants=tenants))
        for u in names:
            keep = tenants[u] == fixed
            recs.append(_conv(f"cf-{i}", u, cf_token if keep and flips > 0 else A, cf_margin))
            flips -= keep
    return History(recs)


def _cf(history: History, tolerance: float = DEFAULT_TOLERANCE) -> tuple[Verdict, list[str], dict[str, float]]:
    r = get("counterfactual-isolation")(history, CheckContext(tolerance))
    return r.verdict, [str(v.details.get("divergence")) for v in r.violations], dict(r.evidence)


# --- the profile ------------------------------------------------------------------------------------


def test_profile_of_identical_repeats_is_deterministic_and_keeps_the_exact_rule() -> None:
    h = _noisy_history(6, 1, 0, 0)
    p = noise_profile(h)
    assert (p.repeats, p.conversations, p.diverged, p.deterministic) == (1, 6, 0, True)
    assert p.margin_bound(DEFAULT_TOLERANCE) == DEFAULT_TOLERANCE
    assert identical(h.ops_of("s", "main"), h.ops_of("s", "aa-1"))


def test_profile_of_a_noisy_target_reads_rate_margins_and_ranks() -> None:
    h = _noisy_history(10, 3, 4, 0, aa_margin=0.04)
    p = noise_profile(h)
    assert (p.conversations, p.diverged, p.unexplained, p.deterministic) == (30, 4, 0, False)
    assert p.margins == pytest.approx([0.04] * 8) and p.ranks == [2] * 4
    assert p.margin_bound(DEFAULT_TOLERANCE) == pytest.approx(MARGIN_SLACK * 0.04)
    assert not identical(h.ops_of("s", "main"), h.ops_of("s", "aa-1"))


def test_a_history_without_a_b_runs_is_uncalibrated() -> None:
    h = History([info("main", {"u0": 0}), _conv("main", "u0", A)])
    p = noise_profile(h)
    assert not p.calibrated and not p.deterministic and p.margin_bound(1e-3) == 1e-3


# --- judging: each rule FAILs a faulty history, and an honest noisy one holds ----------------------


def test_deterministic_target_keeps_todays_exact_rule() -> None:
    # A/A identical: a counterfactual divergence at a 0.05-nat near-tie is a violation, as before.
    verdict, kinds, _ = _cf(_noisy_history(20, 1, 0, 1))
    assert verdict is Verdict.FAIL and kinds == ["reference-margin"]


def test_noisy_target_excuses_divergences_like_its_a_b_noise() -> None:
    # 60 users, 3 repeats: 18 of 180 A/A conversations diverged, 6 of 60 counterfactual ones.
    verdict, kinds, ev = _cf(_noisy_history(60, 3, 18, 6))
    assert verdict is Verdict.PASS and kinds == []
    assert ev["conversations"] == 60 and ev["conversations_diverged"] == 6
    assert ev["rate_p_value"] > 0.01 and ev["min_detectable_leak_rate"] <= MAX_MISSED_LEAK_RATE


def test_noisy_target_still_fails_a_token_outside_the_top_logprobs() -> None:
    verdict, kinds, _ = _cf(_noisy_history(60, 3, 18, 1, cf_token=X))
    assert verdict is Verdict.FAIL and kinds == ["outside-reference-top"]


def test_noisy_target_fails_a_margin_beyond_what_a_b_showed() -> None:
    # A/A flips happened at 0.05 nats; a flip at 0.5 nats is beyond MARGIN_SLACK x 0.05.
    verdict, kinds, _ = _cf(_noisy_history(60, 3, MIN_AA_DIVERGENCES, 1, cf_margin=0.5))
    assert verdict is Verdict.FAIL and kinds == ["observed-margin"]


def test_a_margin_bound_from_too_few_a_a_divergences_is_unknown_not_fail() -> None:
    """Seen under the drift control: 10 A/A divergences gave a bound of 0.036 nats and a benign flip
    at 0.044 FAILed the run. Below MIN_AA_DIVERGENCES the largest A/A margin does not bound the
    noise: such a divergence is UNKNOWN; a token outside the top logprobs still FAILs."""
    verdict, kinds, ev = _cf(_noisy_history(60, 3, MIN_AA_DIVERGENCES - 1, 1, cf_margin=0.5))
    assert verdict is Verdict.UNKNOWN and kinds == [] and ev["margin_unbounded"] == 1
    verdict, kinds, _ = _cf(_noisy_history(60, 3, MIN_AA_DIVERGENCES - 1, 1, cf_token=X))
    assert verdict is Verdict.FAIL and kinds == ["outside-reference-top"]


def test_noisy_target_fails_a_divergence_rate_beyond_chance() -> None:
    # Each divergence looks like noise, but 30 of 60 against 18 of 180: a leak at a near-tie's scale.
    verdict, kinds, ev = _cf(_noisy_history(60, 3, 18, 30))
    assert verdict is Verdict.FAIL and kinds == ["rate"]
    assert ev["rate_p_value"] <= 0.01


def test_run_without_power_is_unknown_not_pass() -> None:
    # 6 users: no rate test at this size could see a leak of MAX_MISSED_LEAK_RATE.
    verdict, kinds, ev = _cf(_noisy_history(6, 3, 3, 1))
    assert verdict is Verdict.UNKNOWN and kinds == [] and ev["underpowered"] == 1
    assert ev["unknown_for_power_only"] == 1  # it held otherwise: what the selftest's benign rows may excuse


def test_explicit_tolerance_overrides_the_calibrated_bound() -> None:
    # The A/A runs would excuse a 0.05-nat flip; a hand-set bound of 0.01 does not.
    verdict, kinds, ev = _cf(_noisy_history(60, 3, 18, 1), tolerance=0.01)
    assert verdict is Verdict.FAIL and kinds == ["reference-margin"] and ev["margin_bound"] == 0.01


def test_solo_comparison_is_judged_against_the_same_bound() -> None:
    h = _noisy_history(60, 3, MIN_AA_DIVERGENCES, 0)
    names = [f"u{i}" for i in range(60)]
    h.records.append(info("solo", dict.fromkeys(names, 0), isolation="salt"))
    h.records.extend(_conv("solo", u, B if i < 2 else A) for i, u in enumerate(names))
    r = get("cache-transparency")(h, CTX)
    assert r.verdict is Verdict.PASS and r.drift == 2
    h.records += [info("main", {"u0": 0}, scenario="s2"), _conv("main", "u0", A, 0.9, scenario="s2"),
                  info("solo", {"u0": 0}, isolation="salt", scenario="s2"), _conv("solo", "u0", B, 0.9, scenario="s2")]
    r = get("cache-transparency")(h, CTX)
    assert r.verdict is Verdict.FAIL  # a flip at 0.9 nats is beyond what the A/A runs showed


# --- the engine's A/A repeats ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake() -> Iterator[SpawnedServer]:
    with FakeServer.spawn() as server:
        yield server


def test_deterministic_target_stops_calibrating_after_one_identical_repeat(fake: SpawnedServer) -> None:
    scenario = load_scenario(LIBRARY / "strict-prefix.yaml")
    result = engine.run([scenario], ExternalStack(fake.url), engine.RunOptions(seed=3),
                        console=Console(stderr=True, quiet=True))
    assert result.verdict is Verdict.PASS, result.reasons
    cal = [e for e in result.history.events if isinstance(e, CalibrationRun)]
    assert [(c.run, c.repeat, c.note) for c in cal] == [("aa-1", 1, "identical to the main run")]
    main = [o for o in result.history.ops if o.role is Role.MAIN]
    aa = [o for o in result.history.ops if o.role is Role.CALIBRATION]
    assert len(aa) == len(main)
    assert sorted(o.prompt_token_ids or [] for o in aa) == sorted(o.prompt_token_ids or [] for o in main)
    profile = result.meta.extra["noise_profile"]
    assert profile["deterministic"] and profile["repeats"] == 1 and profile["requests"] == len(main)
    assert result.meta.extra["tolerance_override"] is False


def test_calibration_can_be_turned_off(fake: SpawnedServer) -> None:
    scenario = load_scenario(LIBRARY / "strict-prefix.yaml")
    result = engine.run([scenario], ExternalStack(fake.url), engine.RunOptions(seed=3, calibration_repeats=0),
                        console=Console(stderr=True, quiet=True))
    assert not any(o.role is Role.CALIBRATION for o in result.history.ops)
    assert result.meta.extra["noise_profile"]["calibrated"] is False


def test_random_noise_at_the_a_b_rate_rarely_fails() -> None:
    """Under the null (counterfactual noise drawn at the A/A rate), the rate test FAILs at most about
    alpha of the time: 200 seeded draws, a bound well above alpha's expected 2 failures."""
    rng = random.Random(0)
    fails = 0
    for _ in range(200):
        k0 = sum(rng.random() < 0.1 for _ in range(180))
        k1 = sum(rng.random() < 0.1 for _ in range(60))
        fails += fisher_greater(k1, 60, k0, 180) <= 0.01
    assert fails <= 8
