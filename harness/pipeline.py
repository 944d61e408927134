"""One isolation run end to end: scenarios -> driver -> history -> checks -> verdict -> reports.

The pipeline only wires stages together; each stage lives in its own module. Anything that stops
the run early (bad scenario, unreachable target, a server that dies) ends in UNKNOWN (exit 2)
with a clear message and the history recorded so far saved.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from harness import __version__
from harness.checks.base import CheckContext, run_checks
from harness.checks.compare import DEFAULT_TOLERANCE
from harness.driver.adversary import Case, build_cases, health_op, run_adversary
from harness.driver.driver import DriverOptions, RunSpec, TargetDown, drive_run, now
from harness.history.record import History, HistoryWriter, MetricsSnapshot
from harness.known import KnownFinding, apply_known, load_known_findings
from harness.plan.plans import plan_runs
from harness.reporters.console import print_summary
from harness.reporters.json_report import write_json
from harness.reporters.html import write_html
from harness.reporters.junit import write_junit
from harness.reporters.reproducer import write_reproducer
from harness.scenario.io import ScenarioError, load_scenarios
from harness.scenario.model import Scenario
from harness.scenario.render import make_nonce
from harness.client.http import TargetClient
from harness.stacks.vllm import EmbeddedServer, LaunchError
from harness.stacks.llamacpp import LlamaCppServer
from harness.plan.resolve import ResolveError, resolve_models, split_models
from harness.probe.capabilities import ProbeError, parse_prefix_cache_metrics
from harness.probe.needs import probe_target, solo_isolation
from harness.verdict import CheckResult, Verdict, overall


@dataclass
class RunConfig:
    target: str | None = None
    scenario_paths: list[Path] = field(default_factory=lambda: [Path("scenarios")])
    report_dir: Path = Path("reports/latest")
    seed: int | None = None
    tolerance: float = DEFAULT_TOLERANCE
    policy: str = "shared-prefix"
    timeout_s: float = 60.0
    counterfactual: bool = True
    solo: bool = True
    known_findings: Path | None = None
    stack: str = "vllm"
    """The server the harness launches when no target is given: "vllm" or "llama-cpp"."""


@dataclass
class RunOutcome:
    verdict: Verdict
    results: list[CheckResult]
    report: dict[str, Any]
    report_dir: Path
    error: str | None = None

    @property
    def exit_code(self) -> int:
        return self.verdict.exit_code


def _prepare_report_dir(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for name in ("history.jsonl", "report.json", "junit.xml"):
        (d / name).unlink(missing_ok=True)
    shutil.rmtree(d / "reproducers", ignore_errors=True)


async def _drive_all(client: TargetClient, scenarios: list[Scenario], writer: HistoryWriter, cfg: RunConfig,
                     meta: dict[str, Any], console: Console, restart: Callable[[], object] | None) -> None:
    hostile = TargetClient(client.base_url, timeout_s=cfg.timeout_s, keepalive=False)
    async with hostile:
        await _drive_scenarios(client, hostile, scenarios, writer, cfg, meta, console, restart)


async def _drive_scenarios(client: TargetClient, hostile: TargetClient, scenarios: list[Scenario],
                           writer: HistoryWriter, cfg: RunConfig, meta: dict[str, Any], console: Console,
                           restart: Callable[[], object] | None = None) -> None:
    entries = await client.model_entries()
    caps = await probe_target(client)
    meta["capabilities"] = caps.to_json()
    solo_mode = solo_isolation(caps, can_restart=restart is not None)
    meta["solo_isolation"] = solo_mode
    base_model, adapters = split_models(entries)
    fields = (caps.openapi.value or {}).get("completions") or [] if isinstance(caps.openapi.value, dict) else []
    planned: list[tuple[Scenario, list[RunSpec], list[Case]]] = []
    for sc in scenarios:
        try:
            models = resolve_models(sc, entries)
        except ResolveError as exc:
            # The target lacks what the scenario needs (e.g. LoRA adapters): run the rest, say so,
            # and never let the run PASS (see run_isolation).
            meta.setdefault("skipped_scenarios", {})[sc.name] = str(exc)
            console.print(f"[yellow]skipped scenario {sc.name}: {exc}[/]")
            continue
        nonce = make_nonce()
        meta["nonces"][sc.name] = nonce
        runs = plan_runs(sc, nonce, models, solo_mode, cfg.counterfactual, cfg.solo, cfg.policy)
        cases = build_cases(sc, runs[0].plans, fields, models, runs[0].salts, adapters) if sc.adversary else []
        planned.append((sc, runs, cases))
    total = sum(len(p.turn_texts) for _, runs, _ in planned for r in runs for p in r.plans)
    total += sum(len(cases) * (2 if sc.adversary and sc.adversary.alone else 1) for sc, _, cases in planned)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("requests", total=total)
        opts = DriverOptions(on_op=lambda op: progress.advance(task), restart=restart)
        writer.append(await _metrics_snapshot(client, "before"))
        for sc, runs, cases in planned:
            for spec in runs:
                progress.update(task, description=f"{sc.name} [{spec.run}]")
                if spec.run == "main" and cases and sc.adversary:
                    await asyncio.gather(drive_run(client, spec, writer, opts),
                                         run_adversary(hostile, sc, cases, base_model, writer, "adversary",
                                                       sc.adversary.concurrency, opts.on_op))
                else:
                    await drive_run(client, spec, writer, opts)
            if cases and sc.adversary and sc.adversary.alone:
                progress.update(task, description=f"{sc.name} [adversary-alone]")
                await run_adversary(hostile, sc, cases, base_model, writer, "adversary-alone", 1, opts.on_op)
            if cases:
                writer.append(await health_op(client, sc, base_model))
        writer.append(await _metrics_snapshot(client, "after"))


async def _metrics_snapshot(client: TargetClient, label: str) -> MetricsSnapshot:
    try:
        counters, _, _ = parse_prefix_cache_metrics(await client.get_text("/metrics"))
    except (httpx.HTTPError, ValueError):
        counters = None
    return MetricsSnapshot(label, now(), counters.queries if counters else None, counters.hits if counters else None)


def run_isolation(cfg: RunConfig, console: Console | None = None) -> RunOutcome:
    console = console or Console(stderr=True)
    started = time.time()
    meta: dict[str, Any] = {
        "harness_version": __version__, "target": cfg.target or "embedded", "policy": cfg.policy,
        "tolerance": cfg.tolerance, "started_unix": started, "scenario_files": [], "nonces": {},
    }
    report_dir = Path(cfg.report_dir)
    _prepare_report_dir(report_dir)
    error: str | None = None
    scenarios: list[Scenario] = []
    findings: list[KnownFinding] = []
    writer = HistoryWriter(report_dir / "history.jsonl")
    with ExitStack() as stack:
        stack.callback(writer.close)
        try:
            findings = load_known_findings(cfg.known_findings) if cfg.known_findings else []
            loaded = load_scenarios(cfg.scenario_paths)
            scenarios = [s if cfg.seed is None else s.model_copy(update={"seed": cfg.seed}) for _, s in loaded]
            meta["scenario_files"] = [str(p) for p, _ in loaded]
            meta["seeds"] = {s.name: s.seed for s in scenarios}
            server = None
            base_url = cfg.target
            if base_url is None:
                server = LlamaCppServer() if cfg.stack == "llama-cpp" else EmbeddedServer()
                console.print(f"starting the {server.NAME} server ...")
                stack.enter_context(server)
                base_url = server.base_url
                meta["embedded_startup_s"] = round(server.startup_s or 0, 1)
            meta["embedded"] = server is not None
            meta["target"] = base_url
            meta["server_version"] = _server_version(base_url, cfg.timeout_s)
            client = TargetClient(base_url, timeout_s=cfg.timeout_s)

            async def go() -> None:
                async with client:
                    await _drive_all(client, scenarios, writer, cfg, meta, console,
                                     server.restart if server is not None else None)

            try:
                asyncio.run(go())
            except TargetDown as exc:
                error = str(exc)
                if server is not None and not server.alive:
                    error += "\n" + _quiet(server.check_alive)
        except (ScenarioError, ResolveError, LaunchError, TargetUnreachable, ProbeError, ValueError) as exc:
            error = str(exc)
        except httpx.HTTPError as exc:
            error = f"target error: {type(exc).__name__}: {exc}"
    history = History(writer.records)
    results = run_checks(history, CheckContext(cfg.tolerance, cfg.policy)) if history.ops else []
    known = apply_known(results, findings, meta, history) if not error else []
    meta["known_findings"] = [k.to_json() for k in known]
    # A shown violation stands even when the run stopped early; otherwise an early stop is UNKNOWN.
    verdict = overall(results)
    if error and verdict is not Verdict.FAIL:
        verdict = Verdict.UNKNOWN
    if meta.get("skipped_scenarios") and verdict is Verdict.PASS:
        verdict = Verdict.UNKNOWN  # a scenario the target could not run was not shown to hold
    meta["duration_s"] = round(time.time() - started, 1)
    meta["error"] = error
    meta["requests"] = len(history.ops)
    reproducers = []
    by_name = {s.name: s for s in scenarios}
    known_violations = [v for k in known for v in k.violations]
    for i, v in enumerate([v for r in results for v in r.violations] + known_violations):
        reproducers.append(str(write_reproducer(report_dir / "reproducers", i + 1, v, by_name.get(v.scenario),
                                                history, str(meta["target"]))))
    meta["reproducers"] = reproducers
    report = write_json(report_dir / "report.json", verdict, results, meta)
    write_junit(report_dir / "junit.xml", results)
    write_html(report_dir)
    print_summary(console, verdict, results, meta, report_dir)
    return RunOutcome(verdict, results, report, report_dir, error)


class TargetUnreachable(RuntimeError):
    pass


def _server_version(base_url: str, timeout_s: float) -> str | None:
    try:
        resp = httpx.get(base_url.rstrip("/") + "/v1/models", timeout=min(timeout_s, 10))
    except httpx.HTTPError as exc:
        raise TargetUnreachable(f"target {base_url} is unreachable: {type(exc).__name__}: {exc}") from None
    if resp.status_code != 200 or "data" not in _json_or_empty(resp):
        raise TargetUnreachable(f"target {base_url} does not look OpenAI-compatible: GET /v1/models -> "
                                f"HTTP {resp.status_code}")
    try:
        v = httpx.get(base_url.rstrip("/") + "/version", timeout=5)
        return str(v.json().get("version")) if v.status_code == 200 else None
    except (httpx.HTTPError, ValueError, AttributeError):
        return None


def _json_or_empty(resp: httpx.Response) -> dict[str, Any]:
    try:
        data = resp.json()
    except json.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def _quiet(fn: Any) -> str:
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - we only want the message
        return str(exc)
    return ""
