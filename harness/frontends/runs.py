"""What every frontend does around `engine.run`: run, write the file reports, print the summary.

`run_and_report` takes `Scenario` objects; `run_files` loads YAML scenario files (and a
known-findings file) first, and turns a file that cannot be read into an UNKNOWN run with the
message (exit 2), reports written as for any run. `run_isolation` takes every setting as the
command line gives them (`RunConfig`: paths, a target URL or stack name), for `harness run`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from rich.console import Console

from harness.checks.compare import DEFAULT_TOLERANCE
from harness.client.connection import Connection
from harness.engine import RunOptions, failed_before_start, run
from harness.known import KnownFinding, load_known_findings
from harness.reporters import print_summary, write_all
from harness.result import RunResult
from harness.scenario.io import ScenarioError, load_scenarios
from harness.scenario.library import library_path
from harness.scenario.model import Scenario
from harness.stacks import Stack, make_stack


def run_and_report(scenarios: list[Scenario], stack: Stack, options: RunOptions, report_dir: Path,
                   console: Console | None = None) -> RunResult:
    """`engine.run` with the history streamed to `report_dir`, then every file report and the
    console summary."""
    console = console or Console(stderr=True)
    result = run(scenarios, stack, replace(options, report_dir=Path(report_dir)), console=console)
    write_all(result, Path(report_dir))
    print_summary(result, console)
    return result


def run_files(paths: list[Path], stack: Stack, options: RunOptions, report_dir: Path,
              known_findings: Path | None = None, console: Console | None = None) -> RunResult:
    """Load the scenario files under `paths` (and `known_findings`), then `run_and_report`."""
    console = console or Console(stderr=True)
    try:
        findings: list[KnownFinding] = load_known_findings(known_findings) if known_findings else []
        loaded = load_scenarios(list(paths))
    except (ScenarioError, ValueError) as exc:
        opts = replace(options, report_dir=Path(report_dir))
        base = stack.base_url if not stack.traits.owned else None
        result = failed_before_start(str(exc), opts, target=base, stack_name=stack.NAME)
        write_all(result, Path(report_dir))
        print_summary(result, console)
        return result
    opts = replace(options, known_findings=tuple(findings), scenario_files=tuple(str(p) for p, _ in loaded))
    return run_and_report([s for _, s in loaded], stack, opts, report_dir, console)


@dataclass
class RunConfig:
    """`harness run`'s settings (paths in, a report folder out); see `run_isolation`."""

    target: str | None = None
    scenario_paths: list[Path] = field(default_factory=lambda: [library_path()])
    report_dir: Path = Path("reports/latest")
    seed: int | None = None
    tolerance: float = DEFAULT_TOLERANCE
    policy: str = "shared-prefix"
    timeout_s: float = 60.0
    counterfactual: bool = True
    solo: bool = True
    known_findings: Path | None = None
    stack: str = "vllm"
    """The server the harness launches when no target is given (a `harness.stacks` name)."""
    connection: Connection | None = field(default=None, compare=False)
    """Credentials, headers, TLS, tenant identities (`harness.client.connection`; not compared:
    it holds secrets and is checked on its own)."""
    model: str | None = None
    gateway_salts: bool = False
    allow_disruptive: bool = False
    replay_incidents: bool = False
    """Replay the requests in flight at an incident against a URL (`--replay-incidents`)."""

    def options(self) -> RunOptions:
        return RunOptions(seed=self.seed, tolerance=self.tolerance, policy=self.policy, timeout_s=self.timeout_s,
                          counterfactual=self.counterfactual, solo=self.solo, connection=self.connection,
                          model=self.model, gateway_salts=self.gateway_salts, allow_disruptive=self.allow_disruptive,
                          replay_incidents=self.replay_incidents)


def run_isolation(cfg: RunConfig, console: Console | None = None) -> RunResult:
    """One run from a `RunConfig`: scenario files against `cfg.target` (else the named stack)."""
    stack = make_stack(cfg.target, cfg.stack)
    return run_files(list(cfg.scenario_paths), stack, cfg.options(), Path(cfg.report_dir), cfg.known_findings,
                     console)
