"""Every scenario of a run, planned and driven in order: the main run (with the adversarial tenant
alongside where a scenario has one), the counterfactual re-runs, the solo replay, the adversary
alone, a health request, and the server's prefix-cache counters before and after.

Right after each main run come its A/A repeats ("aa-N", recorded as `CalibrationRun`s): the main
run again with the same content, seeds and schedule, nothing re-drawn, to measure the target's own
noise (docs/design.md, "Comparing two generations"). A scenario stops after one repeat identical to
its main run unless an earlier scenario's repeats already diverged (the target is noisy)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from harness.adversary.confusion import Domains
from harness.adversary.coverage import plan_note
from harness.adversary.plan import AdversaryPlan, plan_adversary, target_of
from harness.calibration.profile import identical
from harness.client import TargetClient
from harness.driver.adversary import alone_cases, health_op, own_prompt, run_adversary
from harness.driver.driver import DriverOptions, NemesisHook, RunSpec, drive_run, now
from harness.driver.sink import Sink
from harness.history.record import LIFE_END, CalibrationRun, MetricsSnapshot, Operation, Role, RunInfo
from harness.plan.plans import plan_runs
from harness.plan.resolve import ResolveError, resolve_models, split_models
from harness.probe.metrics import PrefixCacheCounters, parse_prefix_cache_metrics
from harness.probe.needs import Isolation
from harness.probe.types import Capabilities
from harness.scenario.model import Scenario
from harness.scenario.render import make_nonce

METRICS_SETTLE_S = 5.0
"""How long the final counter snapshot waits for the server's stats to stop moving."""
METRICS_POLL_S = 0.2


@dataclass
class Planned:
    """One scenario's runs and adversarial plan."""

    scenario: Scenario
    runs: list[RunSpec]
    adversary: AdversaryPlan | None = None

    @property
    def requests(self) -> int:
        n = sum(len(p.turn_texts) for r in self.runs for p in r.plans)
        return n + (self.adversary.requests if self.adversary else 0)


def plan_all(scenarios: list[Scenario], entries: list[dict[str, Any]], caps: Capabilities, solo_mode: Isolation,
             counterfactual: bool, solo: bool, policy: str, skipped: dict[str, str],
             nonces: dict[str, str], *, openapi_doc: dict[str, Any] | None = None,
             adversary_budget: int | None = None, adversary_rotation: int = 0) -> list[Planned]:
    """Plan every scenario the target can run; the others go to `skipped` (name -> why), the
    run's nonce of each planned one to `nonces`. The adversarial tenant's cases come from
    `openapi_doc` (the target's OpenAPI document) within `adversary_budget` requests."""
    _, adapters = split_models(entries)
    target = target_of(openapi_doc, entries)
    block = caps.block_size.value if isinstance(caps.block_size.value, int) else None
    planned = []
    for sc in scenarios:
        try:
            models = resolve_models(sc, entries)
        except ResolveError as exc:
            # The target lacks what the scenario needs (e.g. LoRA adapters): run the rest, say so,
            # and never let the run PASS (harness.verdict.decide).
            skipped[sc.name] = str(exc)
            continue
        nonce = nonces[sc.name] = make_nonce()
        runs = plan_runs(sc, nonce, models, solo_mode, counterfactual, solo, policy)
        hostile = None
        if sc.adversary:
            domains = Domains(runs[0].plans, dict(runs[0].salts), dict(models), list(adapters))
            hostile = plan_adversary(sc, domains, target, block, adversary_budget, openapi_doc, adversary_rotation)
        planned.append(Planned(sc, runs, hostile))
    return planned


async def drive_planned(client: TargetClient, hostile: TargetClient, entries: list[dict[str, Any]],
                        planned: list[Planned], sink: Sink, console: Console,
                        restart: Callable[[], object] | None, nemesis: NemesisHook | None = None,
                        calibration_repeats: int = 0) -> None:
    """Drive every planned scenario in order (raises TargetDown if the target stops answering), with
    up to `calibration_repeats` A/A repeats of each main run that has references to judge.
    `nemesis` acts by operation index in every run of a scenario (`harness.nemesis.runner`)."""
    base_model, _ = split_models(entries)
    total = sum(p.requests for p in planned)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("requests", total=total)
        async def snapshot(c: TargetClient, label: str) -> None:
            sink.append(await metrics_snapshot(c, label, settle=label == LIFE_END))

        opts = DriverOptions(on_op=lambda op: progress.advance(task), restart=restart, nemesis=nemesis,
                             snapshot=snapshot)
        sink.append(await metrics_snapshot(client, "before"))
        noisy = False
        gate = nemesis.gate if nemesis is not None else None
        for p in planned:
            sc, adversary, hp = p.scenario, p.scenario.adversary, p.adversary
            broken: list[Any] = []
            victims = [s for s in p.runs if Role.of_run(s.run) in (Role.MAIN, Role.COUNTERFACTUAL)]
            during = _spread(hp.during, len(victims)) if hp else []
            for spec in p.runs:
                progress.update(task, description=f"{sc.name} [{spec.run}]")
                if hp and adversary and spec in victims:
                    k, prompt = adversary.concurrency, own_prompt(spec.plans)
                    if Role.of_run(spec.run) is Role.MAIN:
                        sink.append(RunInfo(Role.ADVERSARY.value, sc.name, spec.nonce, sc.seed, {}, {}, {}, {},
                                            note=plan_note(hp.summary())))
                        broken += await run_adversary(hostile, sc, hp.before, base_model, sink, Role.ADVERSARY, k,
                                                      opts.on_op, prompt, gate)
                    _, more = await asyncio.gather(
                        drive_run(client, spec, sink, opts),
                        run_adversary(hostile, sc, during[victims.index(spec)], base_model, sink, Role.ADVERSARY, k,
                                      opts.on_op, prompt, gate))
                    broken += more
                    if Role.of_run(spec.run) is Role.MAIN:
                        broken += await run_adversary(hostile, sc, hp.after, base_model, sink, Role.ADVERSARY, k,
                                                      opts.on_op, prompt, gate)
                else:
                    await drive_run(client, spec, sink, opts)
                if Role.of_run(spec.run) is Role.MAIN and len(p.runs) > 1 and calibration_repeats > 0:
                    progress.update(task, description=f"{sc.name} [A/A]")
                    noisy |= await calibrate(client, spec, sink, opts, calibration_repeats, noisy)
            if hp and adversary and adversary.alone and broken:
                progress.update(task, description=f"{sc.name} [{Role.ADVERSARY_ALONE.value}]")
                await run_adversary(hostile, sc, alone_cases(broken), base_model, sink, Role.ADVERSARY_ALONE, 1,
                                    opts.on_op, own_prompt(p.runs[0].plans), gate)
            if hp:
                sink.append(await health_op(client, sc, base_model))
        sink.append(await metrics_snapshot(client, "after", settle=True))


def _spread(cases: list[Any], n: int) -> list[list[Any]]:
    """`cases` cut into `n` contiguous chunks of near-equal size (one per victims' run)."""
    n = max(1, n)
    size, extra = divmod(len(cases), n)
    out, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        out.append(cases[start:end])
        start = end
    return out


async def calibrate(client: TargetClient, main: RunSpec, sink: Sink, opts: DriverOptions, repeats: int,
                    noisy: bool) -> bool:
    """Drive up to `repeats` A/A repeats of `main`; stop after an identical one unless the target is
    already known to be `noisy`. Returns whether some repeat differed from the main run."""
    name = main.scenario.name
    main_ops = _ops(sink, name, main.run)
    differed = False
    for i in range(1, repeats + 1):
        run = f"aa-{i}"
        await drive_run(client, replace(main, run=run, note=f"A/A repeat {i} of the main run",
                                        requires_cross_user_hits=False), sink, opts)
        same = identical(main_ops, _ops(sink, name, run))
        sink.append(CalibrationRun(run=run, scenario=name, repeat=i,
                                   note="identical to the main run" if same else "differs from the main run"))
        differed |= not same
        if same and not (noisy or differed):
            break
    return differed


def _ops(sink: Sink, scenario: str, run: str) -> list[Operation]:
    return [r for r in sink.records if isinstance(r, Operation) and r.scenario == scenario and r.run == run]


async def metrics_snapshot(client: TargetClient, label: str, *, settle: bool = False) -> MetricsSnapshot:
    """The server's prefix-cache counters now (None where it exposes none). With `settle`, read
    again until two reads agree (the server updates its stats asynchronously, as the probe knows),
    bounded by METRICS_SETTLE_S."""
    counters = await _read_counters(client)
    deadline = time.monotonic() + METRICS_SETTLE_S
    while settle and counters is not None and time.monotonic() < deadline:
        await asyncio.sleep(METRICS_POLL_S)  # polling an external counter, bounded by the deadline
        again = await _read_counters(client)
        if again is None or (again.queries, again.hits) == (counters.queries, counters.hits):
            break
        counters = again
    return MetricsSnapshot(label, now(), counters.queries if counters else None, counters.hits if counters else None)


async def _read_counters(client: TargetClient) -> PrefixCacheCounters | None:
    try:
        counters, _, _ = parse_prefix_cache_metrics(await client.get_text("/metrics"))
    except (httpx.HTTPError, ValueError):
        return None
    return counters
