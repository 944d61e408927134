"""One isolation run in memory: scenarios + stack + options -> `RunResult` (docs/design.md, "The pipeline").

`run` starts the stack if it is not running (and stops it at the end only then), checks that
the target answers like an OpenAI-compatible server, probes it, plans each scenario's runs,
drives them (with the adversarial tenant where a scenario has one), appends what the stack
reports (`Stack.events()`), runs every registered check and lets `harness.verdict.decide`
decide. It writes no report: reporters are functions of the `RunResult`. With
`RunOptions.report_dir` the history is streamed to `report_dir/history.jsonl` as it happens,
so a run that dies keeps what it recorded.

Anything that stops the run early (unreachable target, launch error, a server that dies, a
target that lacks what a scenario needs for every scenario) ends in UNKNOWN with the message,
and the partial history kept.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from harness import __version__
from harness.checks.base import CheckContext, run_checks
from harness.checks.compare import DEFAULT_TOLERANCE
from harness.client import TargetClient
from harness.driver.campaign import Planned, drive_planned, plan_all
from harness.driver.driver import TargetDown
from harness.driver.sink import MemorySink, Sink
from harness.history.record import History, HistoryHeader, HistoryWriter
from harness.known import KnownFinding, known_violations, match_known
from harness.plan.resolve import ResolveError
from harness.probe.needs import probe_target, solo_isolation
from harness.probe.types import ProbeError
from harness.result import RunMeta, RunResult
from harness.scenario.io import ScenarioError
from harness.scenario.model import Scenario
from harness.stacks.base import Stack
from harness.stacks.process import LaunchError
from harness.verdict import decide

__all__ = [
    "RunMeta",
    "RunOptions",
    "RunResult",
    "TargetUnreachable",
    "failed_before_start",
    "prepare_report_dir",
    "run",
]


class TargetUnreachable(RuntimeError):
    """The target does not answer, or does not look like an OpenAI-compatible server."""


@dataclass(frozen=True)
class RunOptions:
    """How to run (the CLI's flags, typed)."""

    seed: int | None = None
    """Override every scenario's content seed."""
    tolerance: float = DEFAULT_TOLERANCE
    policy: str = "shared-prefix"
    timeout_s: float = 60.0
    counterfactual: bool = True
    solo: bool = True
    known_findings: tuple[KnownFinding, ...] = ()
    report_dir: Path | None = None
    """Stream the history to report_dir/history.jsonl (None: memory only). The folder's old
    history, report.json, junit.xml and reproducers are removed first."""
    scenario_files: tuple[str, ...] = ()
    """Where the scenarios came from (metadata only)."""


def prepare_report_dir(d: Path) -> None:
    """Create `d` and drop a previous run's files from it."""
    d.mkdir(parents=True, exist_ok=True)
    for name in ("history.jsonl", "report.json", "junit.xml"):
        (d / name).unlink(missing_ok=True)
    shutil.rmtree(d / "reproducers", ignore_errors=True)


@dataclass
class _Run:
    """The state of one run while it happens (folded into the RunResult at the end)."""

    options: RunOptions
    console: Console
    sink: Sink
    meta: RunMeta
    skipped: dict[str, str] = field(default_factory=dict)
    error: str | None = None


def run(scenarios: list[Scenario], stack: Stack, options: RunOptions | None = None, *,
        console: Console | None = None) -> RunResult:
    """Drive `scenarios` against `stack` and decide; see the module docstring."""
    options = options or RunOptions()
    console = console or Console(stderr=True)
    started = time.time()
    scenarios = [s if options.seed is None else s.model_copy(update={"seed": options.seed}) for s in scenarios]
    meta = RunMeta(harness_version=__version__, target=stack.base_url or "embedded", stack=stack.NAME,
                   policy=options.policy, tolerance=options.tolerance, started_unix=started,
                   scenario_files=list(options.scenario_files), seeds={s.name: s.seed for s in scenarios})
    sink = _open_sink(options.report_dir)
    state = _Run(options, console, sink, meta)
    sink.append(HistoryHeader(harness_version=__version__, stack_owned=stack.traits.owned))
    started_here = False
    try:
        try:
            if not stack.alive:
                console.print(f"starting the {stack.NAME} server ...")
                started_here = True
                stack.start()
                meta.embedded_startup_s = round(stack.startup_s or 0, 1)
            meta.embedded = stack.traits.owned
            meta.target = stack.base_url
            asyncio.run(_go(state, stack, scenarios))
        except TargetDown as exc:
            state.error = str(exc)
            if stack.traits.owned and not stack.alive:
                state.error += "\n" + _quiet_check_alive(stack)
        except (ScenarioError, ResolveError, LaunchError, TargetUnreachable, ProbeError, ValueError) as exc:
            state.error = str(exc)
        except httpx.HTTPError as exc:
            state.error = f"target error: {type(exc).__name__}: {exc}"
        for event in stack.events():
            sink.append(event)
    finally:
        sink.close()
        if started_here:
            stack.stop()
    return _finish(state, History(list(sink.records)), scenarios, started)


def failed_before_start(error: str, options: RunOptions, *, target: str | None = None,
                        stack_name: str = "") -> RunResult:
    """The UNKNOWN result of a run that could not begin (bad scenario or known-findings file):
    an empty history (streamed to report_dir like any run's) and the message."""
    sink = _open_sink(options.report_dir)
    sink.append(HistoryHeader(harness_version=__version__))
    sink.close()
    started = time.time()
    meta = RunMeta(harness_version=__version__, target=target or "embedded", stack=stack_name,
                   policy=options.policy, tolerance=options.tolerance, started_unix=started,
                   scenario_files=list(options.scenario_files))
    state = _Run(options, Console(stderr=True, quiet=True), sink, meta, error=error)
    return _finish(state, History(list(sink.records)), [], started)


def _open_sink(report_dir: Path | None) -> Sink:
    if report_dir is None:
        return MemorySink()
    prepare_report_dir(Path(report_dir))
    return HistoryWriter(Path(report_dir) / "history.jsonl")


def _finish(state: _Run, history: History, scenarios: list[Scenario], started: float) -> RunResult:
    opts = state.options
    results = run_checks(history, CheckContext(opts.tolerance, opts.policy)) if history.ops else []
    known = [] if state.error else match_known(results, list(opts.known_findings), state.meta.server_version, history)
    decision = decide(results, known_violations(known), error=state.error, skipped=state.skipped)
    state.meta.duration_s = round(time.time() - started, 1)
    state.meta.requests = len(history.ops)
    return RunResult(decision=decision, known=known, history=history, meta=state.meta, scenarios=scenarios,
                     skipped=state.skipped, error=state.error, report_dir=opts.report_dir)


async def _go(state: _Run, stack: Stack, scenarios: list[Scenario]) -> None:
    opts, meta = state.options, state.meta
    base_url = stack.base_url
    meta.server_version = await server_version(base_url, opts.timeout_s)
    async with TargetClient(base_url, timeout_s=opts.timeout_s) as client:
        entries = await client.model_entries()
        caps = await probe_target(client)
        meta.capabilities = caps.to_json()
        mode = solo_isolation(caps, can_restart=stack.traits.can_restart)
        meta.solo_isolation = mode
        planned: list[Planned] = plan_all(scenarios, entries, caps, mode, opts.counterfactual, opts.solo,
                                          opts.policy, state.skipped, meta.nonces)
        for name, why in state.skipped.items():
            state.console.print(f"[yellow]skipped scenario {name}: {why}[/]")
        restart = stack.restart if stack.traits.can_restart else None
        async with TargetClient(base_url, timeout_s=opts.timeout_s, keepalive=False) as hostile:
            await drive_planned(client, hostile, entries, planned, state.sink, state.console, restart)


async def server_version(base_url: str, timeout_s: float) -> str | None:
    """Check that the target answers GET /v1/models like an OpenAI-compatible server (else raise
    TargetUnreachable) and return its /version, if it has one."""
    async with TargetClient(base_url, timeout_s=min(timeout_s, 10), keepalive=False) as quick:
        try:
            data = await quick.get_json("/v1/models")
        except httpx.HTTPStatusError as exc:
            raise TargetUnreachable(f"target {base_url} does not look OpenAI-compatible: GET /v1/models -> "
                                    f"HTTP {exc.response.status_code}") from None
        except httpx.HTTPError as exc:
            raise TargetUnreachable(f"target {base_url} is unreachable: {type(exc).__name__}: {exc}") from None
        except ValueError:
            data = None
        if not isinstance(data, dict) or "data" not in data:
            raise TargetUnreachable(f"target {base_url} does not look OpenAI-compatible: GET /v1/models -> "
                                    "HTTP 200 without a model list")
        try:
            v: Any = await quick.get_json("/version")
            return str(v.get("version"))
        except (httpx.HTTPError, ValueError, AttributeError):
            return None


def _quiet_check_alive(stack: Stack) -> str:
    try:
        stack.check_alive()
    except Exception as exc:
        return str(exc)
    return ""
