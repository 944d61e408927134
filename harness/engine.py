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
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from harness import __version__
from harness.adversary.coverage import summarize as adversary_coverage
from harness.calibration.judge import is_override
from harness.calibration.profile import CALIBRATION_REPEATS, noise_profile
from harness.checks.base import CheckContext, run_checks
from harness.checks.compare import DEFAULT_TOLERANCE
from harness.client import TargetClient
from harness.client.connection import Connection, CredentialError, TenantIdentity, current, tenant_identity, using
from harness.driver.campaign import Planned, drive_planned, plan_all
from harness.driver.driver import TargetDown
from harness.driver.sink import MemorySink, Sink
from harness.history.record import History, HistoryHeader, HistoryWriter, TriageReplay
from harness.incidents import find_incidents
from harness.incidents.triage_run import triage_incidents
from harness.known import KnownFinding, KnownOutcome, known_violations, match_known
from harness.known_repro import recheck_known
from harness.nemesis.runner import NemesisRunner, embedded_adapters
from harness.plan.identity import with_identity_domains
from harness.plan.resolve import ResolveError, select_model
from harness.probe.needs import lacking, probe_target, solo_isolation
from harness.probe.openapi import fetch_document
from harness.probe.types import ProbeError
from harness.result import RunMeta, RunResult
from harness.scenario.io import ScenarioError
from harness.scenario.model import Scenario
from harness.stacks.base import Stack
from harness.stacks.process import LaunchError
from harness.verdict import CheckResult, decide

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
    calibration_repeats: int = CALIBRATION_REPEATS
    """A/A repeats of each main run at most, to measure the target's noise (0: none, the exact rule);
    one when it shows identical outputs (docs/design.md, "Comparing two generations")."""
    connection: Connection | None = None
    """Credentials, headers, TLS and per-tenant identities (None: the one in force)."""
    model: str | None = None
    """The base model under test (None: the first one the target lists that is not an adapter)."""
    gateway_salts: bool = False
    """A gateway sets each tenant's cache salt: cache domains come from tenant identities
    (`harness.plan.identity`)."""
    allow_disruptive: bool = False
    """Allow cache resets against a target the harness did not launch (always allowed on its own)."""
    nemesis: tuple[str, ...] = ()
    """Nemeses acting in every scenario (`harness.nemesis`; a scenario may name more in `nemesis:`)."""
    adapter_sources: dict[str, Path] | None = None
    """Adapter name -> its folder on the server's machine, for adapter churn (None: the embedded
    server's own adapters, when the stack is one)."""
    adversary_budget: int | None = None
    """Hostile requests per adversarial scenario (None: `harness.adversary.cases.DEFAULT_BUDGET`)."""
    adversary_rotation: int = 0
    """Which order the adversary's values and pairwise rows go in (0: the default run's;
    `harness explore` draws one per example: `harness.adversary.plan.plan_adversary`)."""
    replay_incidents: bool = False
    """Replay the requests in flight at an incident against a target the harness does not own
    (`--replay-incidents`; an owned server is always restarted and replayed: `harness.incidents`)."""
    recheck_known: bool = True
    """Run the reproducer of each known finding that applies but that the run did not provoke
    (`harness.known_repro`): it reports "still shows it", "fixed?" or "not re-checked"."""


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
    lacking: dict[str, str] = field(default_factory=dict)
    """What the capability probe could not verify (need -> why): no check resting on it may PASS."""


def run(scenarios: list[Scenario], stack: Stack, options: RunOptions | None = None, *,
        console: Console | None = None) -> RunResult:
    """Drive `scenarios` against `stack` and decide; see the module docstring."""
    options = options or RunOptions()
    console = console or Console(stderr=True)
    started = time.time()
    scenarios = [s if options.seed is None else s.model_copy(update={"seed": options.seed}) for s in scenarios]
    # Scenarios with an adversarial tenant go last (stable otherwise): if its input kills the server,
    # everything else has already run and is judged (docs/design.md, "Incidents").
    scenarios = sorted(scenarios, key=lambda s: s.adversary is not None)
    if options.gateway_salts:
        scenarios = [with_identity_domains(s) for s in scenarios]
    conn = options.connection or current()
    conn = replace(conn, allow_disruptive=options.allow_disruptive or stack.traits.owned,
                   gateway_salts=options.gateway_salts)
    meta = RunMeta(harness_version=__version__, target=stack.base_url or "embedded", stack=stack.NAME,
                   policy=options.policy, tolerance=options.tolerance, started_unix=started,
                   scenario_files=list(options.scenario_files), seeds={s.name: s.seed for s in scenarios})
    sink = _open_sink(options.report_dir)
    state = _Run(options, console, sink, meta)
    sink.append(HistoryHeader(harness_version=__version__, stack_owned=stack.traits.owned,
                              policy=options.policy, tolerance=options.tolerance))
    started_here = False
    judged: _Judged | None = None
    try:
        try:
            if not stack.alive:
                console.print(f"starting the {stack.NAME} server ...")
                started_here = True
                stack.start()
                meta.embedded_startup_s = round(stack.startup_s or 0, 1)
            meta.embedded = stack.traits.owned
            meta.target = stack.base_url
            conn = conn.with_tenants(scenario_identities(scenarios, conn))
            with using(conn):
                asyncio.run(_go(state, stack, scenarios))
        except TargetDown as exc:
            state.error = str(exc)
            if stack.traits.owned and not stack.alive:
                state.error += "\n" + _quiet_check_alive(stack)
        except (ScenarioError, ResolveError, LaunchError, TargetUnreachable, ProbeError, ValueError) as exc:
            state.error = str(exc)
        except httpx.HTTPError as exc:
            state.error = f"target error: {type(exc).__name__}: {exc}"
        if state.error:
            state.error = conn.redact(state.error)
        for event in stack.events():
            sink.append(event)
        with using(conn):
            _triage(state, stack)
            judged = _judge(state, History(list(sink.records)))
            if judged.known and options.recheck_known:
                judged = _recheck(state, stack, judged, restore=not started_here)
    finally:
        sink.close()
        if started_here:
            stack.stop()
    return _finish(state, History(list(sink.records)), scenarios, started, judged)


@dataclass(frozen=True)
class _Judged:
    """The checks' results and the known-finding matches of one history (before the verdict)."""

    results: list[CheckResult]
    known: list[KnownOutcome]


def _judge(state: _Run, history: History) -> _Judged:
    opts = state.options
    results = run_checks(history, CheckContext(opts.tolerance, opts.policy)) if history.ops else []
    known = [] if state.error else match_known(results, list(opts.known_findings), state.meta.server_version, history)
    return _Judged(results, known)


def _recheck(state: _Run, stack: Stack, judged: _Judged, *, restore: bool) -> _Judged:
    """Each known finding that applies but that this run did not provoke: its own reproducer says
    whether it still shows (`harness.known_repro`; informs only, the verdict is `decide`'s)."""
    pending = [k for k in judged.known if not k.violations]
    if not pending:
        return judged
    state.console.print(f"re-checking {len(pending)} known finding(s) this run did not provoke, with their own "
                        "reproducers ...")
    known = asyncio.run(recheck_known(judged.known, stack, restore=restore, timeout_s=state.options.timeout_s))
    return replace(judged, known=known)


def _triage(state: _Run, stack: Stack) -> None:
    """The incident rule's replays (`harness.incidents.triage_run`): each loss of service during the
    run is replayed and bisected where allowed, recorded as `TriageReplay` events."""
    history = History(list(state.sink.records))
    if not find_incidents(history):
        return
    state.console.print("incident(s) during the run: replaying the requests in flight ...")
    try:
        asyncio.run(triage_incidents(history, stack, state.sink, opt_in=state.options.replay_incidents,
                                     timeout_s=state.options.timeout_s))
    except (LaunchError, httpx.HTTPError, OSError) as exc:
        state.sink.append(TriageReplay(0.0, [], False, note=f"triage failed: {type(exc).__name__}: {exc}"))
    for event in stack.events():
        state.sink.append(event)


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


def _finish(state: _Run, history: History, scenarios: list[Scenario], started: float,
            judged: _Judged | None = None) -> RunResult:
    opts = state.options
    judged = judged or _judge(state, history)
    results, known = judged.results, judged.known
    decision = decide(results, known_violations(known), error=state.error, skipped=state.skipped,
                      lacking=state.lacking)
    state.meta.duration_s = round(time.time() - started, 1)
    state.meta.requests = len(history.ops)
    state.meta.extra["noise_profile"] = noise_profile(history).to_json(opts.tolerance)
    state.meta.extra["tolerance_override"] = is_override(opts.tolerance)
    adversary = adversary_coverage(history)
    if adversary:
        state.meta.extra["adversary"] = adversary
    return RunResult(decision=decision, known=known, history=history, meta=state.meta, scenarios=scenarios,
                     skipped=state.skipped, error=state.error, report_dir=opts.report_dir)


async def _go(state: _Run, stack: Stack, scenarios: list[Scenario]) -> None:
    opts, meta = state.options, state.meta
    base_url = stack.base_url
    meta.server_version = await server_version(base_url, opts.timeout_s)
    async with TargetClient(base_url, timeout_s=opts.timeout_s) as client:
        await check_tenant_credentials(client)
        entries = select_model(await client.model_entries(), opts.model)
        caps = await probe_target(client)
        meta.capabilities = caps.to_json()
        state.lacking = lacking(caps, can_restart=stack.traits.can_restart)
        mode = solo_isolation(caps, can_restart=stack.traits.can_restart)
        meta.solo_isolation = mode
        doc = await fetch_document(client) if any(s.adversary for s in scenarios) else None
        planned: list[Planned] = plan_all(scenarios, entries, caps, mode, opts.counterfactual, opts.solo,
                                          opts.policy, state.skipped, meta.nonces, openapi_doc=doc,
                                          adversary_budget=opts.adversary_budget,
                                          adversary_rotation=opts.adversary_rotation)
        for name, why in state.skipped.items():
            state.console.print(f"[yellow]skipped scenario {name}: {why}[/]")
        restart = stack.restart if stack.traits.can_restart else None
        nemesis = _nemesis_runner(opts, stack, planned, state.sink, restart)
        try:
            async with TargetClient(base_url, timeout_s=opts.timeout_s, keepalive=False) as hostile:
                await drive_planned(client, hostile, entries, planned, state.sink, state.console, restart, nemesis,
                                    calibration_repeats=opts.calibration_repeats)
        finally:
            if nemesis is not None:
                await nemesis.aclose()


def _nemesis_runner(opts: RunOptions, stack: Stack, planned: list[Planned], sink: Sink,
                    restart: Callable[[], object] | None) -> NemesisRunner | None:
    """The nemesis for this run (None when neither the options nor any scenario names one). Acts
    that disrupt other clients need a server the harness owns or `allow_disruptive`."""
    names = tuple(dict.fromkeys([*opts.nemesis, *(n for p in planned for n in p.scenario.nemesis)]))
    if not names:
        return None
    sources = opts.adapter_sources if opts.adapter_sources is not None else embedded_adapters(stack)
    return NemesisRunner(names, stack.base_url, sink, restart=restart, adapters=sources, timeout_s=opts.timeout_s,
                         disruptive_ok=opts.allow_disruptive or stack.traits.owned)


async def server_version(base_url: str, timeout_s: float) -> str | None:
    """Check that the target answers GET /v1/models like an OpenAI-compatible server (else raise
    TargetUnreachable) and return its /version, if it has one."""
    async with TargetClient(base_url, timeout_s=min(timeout_s, 10), keepalive=False) as quick:
        try:
            data = await quick.get_json("/v1/models")
        except httpx.HTTPStatusError as exc:
            code = exc.response.status_code
            if code in (401, 403):
                raise TargetUnreachable(
                    f"target {base_url} refused the harness's credentials: GET /v1/models -> HTTP {code} "
                    f"{exc.response.reason_phrase} ({_key_hint(quick.connection)})") from None
            raise TargetUnreachable(f"target {base_url} does not look OpenAI-compatible: GET /v1/models -> "
                                    f"HTTP {code}") from None
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


def scenario_identities(scenarios: list[Scenario], conn: Connection) -> dict[str, TenantIdentity]:
    """tenant -> identity from the scenarios' `api_key_env` and `headers` (raises CredentialError on
    an unset variable or two scenarios disagreeing); the connection's own (the configuration file's)
    take precedence."""
    out: dict[str, TenantIdentity] = {}
    seen: dict[str, tuple[object, ...]] = {}
    for sc in scenarios:
        for t in sc.tenants:
            if t.name in conn.tenants or (t.api_key_env is None and not t.headers):
                continue
            key = (t.api_key_env, tuple(sorted(t.headers.items())))
            if seen.setdefault(t.name, key) != key:
                raise CredentialError(f"tenant {t.name!r} has different credentials in two scenarios")
            out[t.name] = tenant_identity(t.name, t.api_key_env, t.headers)
    return out


def _key_hint(conn: Connection) -> str:
    if conn.api_key_env:
        return f"the key from {conn.api_key_env}"
    return "the key given with --api-key" if conn.api_key else "no API key was given: --api-key or HARNESS_API_KEY"


async def check_tenant_credentials(client: TargetClient) -> None:
    """Every tenant identity of the connection must be accepted (GET /v1/models with its headers):
    a refused key stops the run (UNKNOWN) with the status and the tenant named, before any traffic."""
    for tenant, identity in sorted(client.connection.tenants.items()):
        if not identity.headers:
            continue
        status = await client.tenant_status(tenant)
        if status in (401, 403):
            source = f"the key from {identity.key_env}" if identity.key_env else "its headers"
            raise TargetUnreachable(f"target {client.base_url} refused tenant {tenant!r}'s credentials: "
                                    f"GET /v1/models -> HTTP {status} ({source})")


def _quiet_check_alive(stack: Stack) -> str:
    try:
        stack.check_alive()
    except Exception as exc:
        return str(exc)
    return ""
