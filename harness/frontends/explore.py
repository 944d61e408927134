"""Property-based exploration: search scenarios with hypothesis, shrink a failure, save it, replay it.

Each example hypothesis draws (`harness.scenario.strategies.scenarios`) is run by the engine as a
`Scenario` object (`engine.run`: main run, counterfactual re-runs, solo replay, every check).
A FAIL verdict is a failure for hypothesis, which then shrinks it; UNKNOWN and drift are not
failures (both are counted). The minimal failing scenario is saved as `<found-dir>/<hash>.yaml`
(hash of its canonical JSON) with a header giving the seed, the violation and the report folder
of the failing run (its `reproducers/` hold curl commands); `harness replay FILE` runs it again.

A violation that does not show again (the server is not deterministic under load) is reported as
"found but did not reproduce", never as a crash: hypothesis' own `Flaky` (its final re-run of
the minimal example passed) is caught, and the minimal scenario is always run once more at the
end (`verify`), which decides `reproduced`. Runs are seconds each, so:
- the first failure of a search is re-run `confirm` times before it is shrunk; one that does not
  fail again is kept apart as unconfirmed (its reports stay), not shrunk;
- a scenario that did not fail is remembered by content hash and not run again (shrinking often
  proposes the same scenario through different choice sequences); failing ones are run again
  while the shrink budget lasts;
- hypothesis' shrinking is bounded by `max_shrink_runs` real runs (and by its own 300 s limit),
  after which it is answered from the outcomes already seen. Its generic passes spend most runs
  on details, so a structural reduction follows (`reductions`: drop a user, drop a turn, put one
  dimension back to its plain value; greedy, bounded by `max_reduce_runs`);
- `time_s` runs batches of `batch` examples with seeds derived from the printed one until the time
  is up; a failure found in time is still confirmed, shrunk and reduced within their budgets.
With a fault, every example runs through its own fresh `FaultProxy`, so a failure depends on the
scenario alone, never on traffic of earlier examples.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.frontends.explore_run import (
    FOUND_DIR,
    ExampleStats,
    adapter_roles,
    found_path,
    reductions,
    replay,
    run_scenario,
    save_found,
    stats_of,
    target_alive,
    target_url,
)
from harness.known import KnownFinding
from harness.scenario.model import Adversary, Scenario
from harness.verdict import Verdict, decide_exploration

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

__all__ = ["FOUND_DIR", "ExampleStats", "ExploreConfig", "ExploreResult", "Found", "adapter_roles", "explore",
           "found_path", "reductions", "replay", "run_scenario", "save_found", "stats_of", "target_alive",
           "target_url"]

# --- the search -------------------------------------------------------------------------------------


@dataclass
class ExploreConfig:
    """Settings of one exploration (the CLI's flags)."""

    target: str
    examples: int | None = 20
    time_s: float | None = None
    seed: int | None = None
    report_dir: Path = Path("reports/explore")
    found_dir: Path | None = None
    """Default: scenarios/found/, or <report_dir>/found when a fault is injected (those are not real bugs)."""
    fault: str | None = None
    fault_seed: int = 0
    max_shrink_runs: int = 20
    """Runs hypothesis' shrinker may spend on one failure."""
    max_reduce_runs: int = 30
    """Runs the structural reduction (`reductions`) may spend after hypothesis' shrinker."""
    confirm: int = 1
    """Extra runs the first failure of a search must also FAIL before it is shrunk (a shared server's
    other traffic can make one run fail spuriously; such a phantom is kept apart, not shrunk)."""
    batch: int = 25
    counterfactual: bool = True
    solo: bool = True
    timeout_s: float = 60.0
    strategy: SearchStrategy[Scenario] | None = None
    known_findings: tuple[KnownFinding, ...] = ()
    """The exact-signature baseline `harness run` applies: a known server bug ends no search."""
    adversary: bool = False
    """Give every drawn scenario the adversarial tenant, its hostile values ordered by the example's
    seed (`harness.adversary.plan.plan_adversary`), concurrently with the victims."""
    adversary_budget: int | None = None
    """Hostile requests per example (None: the default run's budget)."""


@dataclass
class Found:
    """A minimal counterexample and where it was saved."""

    scenario: Scenario
    path: Path
    violations: list[str]
    report_dir: Path
    reproduced: bool


@dataclass
class ExploreResult:
    """Totals of an exploration; `examples` counts real runs against the target."""

    seed: int
    examples: int = 0
    generated: int = 0
    shrink_runs: int = 0
    reduce_runs: int = 0
    confirm_runs: int = 0
    seconds: float = 0.0
    requests: int = 0
    cross_user_hits: int = 0
    drift: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)
    unknown_checks: Counter[str] = field(default_factory=Counter)
    """How many runs each check left UNKNOWN (why runs were UNKNOWN)."""
    searches: int = 0
    unconfirmed: list[str] = field(default_factory=list)
    found: list[Found] = field(default_factory=list)
    aborted: str | None = None

    @property
    def verdict(self) -> Verdict:
        """FAIL when a violation was found; UNKNOWN when the target died or any example was not shown
        to hold; PASS only when every example PASSed (`harness.verdict.decide_exploration`)."""
        return decide_exploration(len(self.found), self.aborted, dict(self.verdicts)).verdict

    @property
    def exit_code(self) -> int:
        return self.verdict.exit_code

    def summary(self) -> dict[str, Any]:
        return {
            "seed": self.seed, "examples": self.examples, "generated": self.generated,
            "shrink_runs": self.shrink_runs, "reduce_runs": self.reduce_runs, "confirm_runs": self.confirm_runs,
            "seconds": round(self.seconds, 1), "requests": self.requests, "cross_user_hits": self.cross_user_hits,
            "drift": self.drift, "verdicts": dict(self.verdicts), "unknown_checks": dict(self.unknown_checks),
            "searches": self.searches,
            "unconfirmed_failures": self.unconfirmed, "aborted": self.aborted,
            "failures": [{"file": str(f.path), "reproduced": f.reproduced, "report_dir": str(f.report_dir),
                          "users": len(f.scenario.users), "turns": max(u.turns for u in f.scenario.users),
                          "violations": f.violations} for f in self.found],
        }


class ScenarioFailed(Exception):
    """Raised inside the hypothesis test when a scenario's verdict is FAIL."""

    def __init__(self, key: str, violations: list[str]) -> None:
        super().__init__(f"{key}: " + "; ".join(violations[:3]))
        self.key = key


def batch_seed(seed: int, i: int) -> int:
    """The hypothesis seed of search `i` of a timed exploration (search 0 uses the seed itself)."""
    return seed if i == 0 else int.from_bytes(hashlib.sha256(f"{seed}:{i}".encode()).digest()[:8], "big")


class _Search:
    """The hypothesis test body, the structural reduction and the bookkeeping around both."""

    def __init__(self, cfg: ExploreConfig, result: ExploreResult,
                 on_example: Callable[[Scenario, ExampleStats, str], None] | None) -> None:
        self.cfg, self.result, self.on_example = cfg, result, on_example
        self.deadline = time.monotonic() + cfg.time_s if cfg.time_s else None
        self.not_failing: set[str] = set()
        self.failed: dict[str, tuple[Scenario, list[str]]] = {}
        self.last_failed: str | None = None
        self.phase = ""  # "" (generating), "confirm", "shrink", "reduce", "verify"
        self.shrink_runs = 0

    def reset(self) -> None:
        self.failed.clear()
        self.last_failed = None
        self.phase = ""
        self.shrink_runs = 0

    @property
    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    def body(self, scenario: Scenario) -> None:
        """One hypothesis example: raise ScenarioFailed on a FAIL verdict."""
        from harness.scenario.strategies import scenario_hash

        key = scenario_hash(scenario)
        if self.result.aborted or (not self.phase and self.out_of_time) or key in self.not_failing:
            return
        if self.phase and self.shrink_runs >= self.cfg.max_shrink_runs:
            # Out of shrink budget: answer from what was seen, run nothing more.
            if key in self.failed:
                raise ScenarioFailed(key, self.failed[key][1])
            return
        stats = self.run(scenario, key)
        if stats.verdict is Verdict.FAIL and not self.phase:
            stats = self.confirm(scenario, key, stats)
        if stats.verdict is Verdict.FAIL:
            self.phase = self.phase or "shrink"
            raise ScenarioFailed(key, stats.violations)

    def confirm(self, scenario: Scenario, key: str, stats: ExampleStats) -> ExampleStats:
        """Re-run a first failure `cfg.confirm` times; a run that does not FAIL makes it a phantom."""
        phase, self.phase = self.phase, "confirm"
        try:
            for _ in range(self.cfg.confirm):
                again = self.run(scenario, key)
                if again.verdict is not Verdict.FAIL:
                    # Keep the failing run's reports: a flaky violation may still be a real bug.
                    kept = self.failure_dir("unconfirmed-" + key)
                    shutil.rmtree(kept, ignore_errors=True)
                    shutil.move(str(self.failure_dir(key)), str(kept))
                    self.failed.pop(key, None)
                    self.result.unconfirmed.append(str(kept))
                    return again
            return stats
        finally:
            self.phase = phase

    def reduce(self, key: str) -> str:
        """Greedy structural reduction of a failing scenario; returns the smallest failing one's key."""
        from harness.scenario.strategies import scenario_hash

        self.phase = "reduce"
        runs = 0
        progress = True
        while progress and runs < self.cfg.max_reduce_runs and not self.result.aborted:
            progress = False
            for candidate in reductions(self.failed[key][0]):
                ckey = scenario_hash(candidate)
                if ckey in self.not_failing:
                    continue
                if runs >= self.cfg.max_reduce_runs:
                    break
                runs += 1
                if self.run(candidate, ckey).verdict is Verdict.FAIL:
                    key, progress = ckey, True
                    break
        return key

    def verify(self, key: str) -> bool:
        """Run the minimal failing scenario once more: True when it FAILs again."""
        scenario, violations = self.failed[key]
        self.phase = "verify"
        stats = self.run(scenario, key)
        if stats.verdict is not Verdict.FAIL:
            self.failed[key] = (scenario, violations)  # keep what was seen (run() only records FAILs)
        return stats.verdict is Verdict.FAIL

    def run(self, scenario: Scenario, key: str) -> ExampleStats:
        """Run one scenario against the target and account for it."""
        cfg, res = self.cfg, self.result
        run_dir = cfg.report_dir / "current"
        t0 = time.monotonic()
        outcome = run_scenario(scenario, cfg.target, run_dir, fault=cfg.fault, fault_seed=cfg.fault_seed,
                               counterfactual=cfg.counterfactual, solo=cfg.solo, timeout_s=cfg.timeout_s,
                               known_findings=cfg.known_findings, adversary_budget=cfg.adversary_budget)
        stats = stats_of(outcome, time.monotonic() - t0)
        res.examples += 1
        if self.phase in ("confirm", "verify"):
            res.confirm_runs += 1
        elif self.phase == "reduce":
            res.reduce_runs += 1
        elif self.phase == "shrink":
            self.shrink_runs += 1
            res.shrink_runs += 1
        else:
            res.generated += 1
        res.requests += stats.requests
        res.cross_user_hits += stats.cross_user_hits
        res.drift += stats.drift
        res.verdicts[stats.verdict.value] += 1
        res.unknown_checks.update(stats.unknown_checks)
        if stats.verdict is Verdict.FAIL:
            self.failed[key] = (scenario, stats.violations)
            self.last_failed = key
            dest = self.failure_dir(key)
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(run_dir, dest)
        else:
            self.not_failing.add(key)
        if stats.error and not target_alive(cfg.target):
            res.aborted = f"target stopped answering: {stats.error}"
        if self.on_example:
            self.on_example(scenario, stats, self.phase)
        return stats

    def failure_dir(self, key: str) -> Path:
        return self.cfg.report_dir / "failures" / key


def explore(cfg: ExploreConfig,
            on_example: Callable[[Scenario, ExampleStats, str], None] | None = None) -> ExploreResult:
    """Search for a failing scenario against `cfg.target`; shrink, reduce, save and report what was found.

    Stops at the first confirmed failure. `on_example(scenario, stats, phase)` is called after every
    run; phase is "" (generating), "confirm", "shrink" (hypothesis), "reduce" (structural) or
    "verify" (the minimal scenario's last run, which decides `Found.reproduced`).
    """
    from hypothesis import HealthCheck, Phase, Verbosity, given, seed, settings
    from hypothesis.errors import Flaky

    from harness.scenario.strategies import scenarios

    seed_value = cfg.seed if cfg.seed is not None else secrets.randbelow(2**32)
    result = ExploreResult(seed=seed_value)
    found_dir = Path(cfg.found_dir or (cfg.report_dir / "found" if cfg.fault else FOUND_DIR))
    strategy = cfg.strategy if cfg.strategy is not None else scenarios(adapters=adapter_roles(cfg.target))
    if cfg.adversary:  # the saved counterexample carries its adversary, so a replay sends the same cases
        strategy = strategy.map(lambda s: s if s.adversary else s.model_copy(update={"adversary": Adversary()}))
    search = _Search(cfg, result, on_example)
    started = time.monotonic()
    i = 0
    while True:
        search.reset()

        @seed(batch_seed(seed_value, i))
        @settings(max_examples=(cfg.examples or 20) if cfg.time_s is None else cfg.batch, deadline=None,
                  database=None, derandomize=False, phases=[Phase.generate, Phase.shrink],
                  verbosity=Verbosity.quiet, report_multiple_bugs=False, suppress_health_check=list(HealthCheck),
                  print_blob=False)
        @given(strategy)
        def one_search(scenario: Scenario) -> None:
            search.body(scenario)

        result.searches += 1
        key: str | None = None
        reproduced = True
        try:
            one_search()
        except ScenarioFailed as exc:
            key = exc.key
        except Flaky:
            key, reproduced = search.last_failed, False
        if key is not None and key in search.failed:
            key = search.reduce(key)
            reproduced = search.verify(key)
            result.found.append(_save(cfg, search, key, reproduced, found_dir, seed_value, i))
            break
        i += 1
        if cfg.time_s is None or search.out_of_time or result.aborted:
            break
    result.seconds = time.monotonic() - started
    _prune_failures(cfg.report_dir / "failures", {f.report_dir.name for f in result.found})
    cfg.report_dir.mkdir(parents=True, exist_ok=True)
    (cfg.report_dir / "explore.json").write_text(json.dumps(result.summary(), indent=2))
    return result


def _save(cfg: ExploreConfig, search: _Search, key: str, reproduced: bool, found_dir: Path, seed_value: int,
          i: int) -> Found:
    scenario, violations = search.failed[key]
    report_dir = search.failure_dir(key)
    how = f"harness explore --seed {seed_value}" + (f" --fault {cfg.fault}" if cfg.fault else "")
    lines = [
        f"Counterexample found by `{how}` (hypothesis seed {batch_seed(seed_value, i)}, search {i}),",
        f"against {cfg.target}" + (f" through the fault proxy ({cfg.fault})" if cfg.fault else "") + ",",
        "shrunk by hypothesis, then reduced structurally (users, turns, plain settings).",
        "The violation did NOT reproduce when this minimal scenario was run once more (flaky)."
        if not reproduced else "The violation reproduced when this minimal scenario was run once more.",
        "violations:",
        *(f"  {v}" for v in violations[:5]),
        f"reproducer: {report_dir} (report.json, history.jsonl, reproducers/ with curl commands)",
        "replay: kvbleed replay FILE (exit 0 FIXED, 1 still FAILING, 2 UNKNOWN)",
    ]
    path = save_found(scenario, found_dir, "\n".join(lines))
    return Found(scenario, path, violations, report_dir, reproduced)


def _prune_failures(folder: Path, keep: set[str]) -> None:
    """Drop the report folders of intermediate (non-minimal) failures seen while shrinking
    (unconfirmed ones stay)."""
    if not folder.is_dir():
        return
    for d in folder.iterdir():
        if d.is_dir() and d.name not in keep and not d.name.startswith("unconfirmed-"):
            shutil.rmtree(d, ignore_errors=True)
