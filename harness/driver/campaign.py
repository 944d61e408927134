"""Every scenario of a run, planned and driven in order: the main run (with the adversarial tenant
alongside where a scenario has one), the counterfactual re-runs, the solo replay, the adversary
alone, a health request, and the server's prefix-cache counters before and after."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from harness.client import TargetClient
from harness.driver.adversary import Case, build_cases, health_op, run_adversary
from harness.driver.driver import DriverOptions, RunSpec, drive_run, now
from harness.driver.sink import Sink
from harness.history.record import MetricsSnapshot, Role
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
    """One scenario's runs and adversarial cases."""

    scenario: Scenario
    runs: list[RunSpec]
    cases: list[Case]

    @property
    def requests(self) -> int:
        n = sum(len(p.turn_texts) for r in self.runs for p in r.plans)
        alone = self.scenario.adversary is not None and self.scenario.adversary.alone
        return n + len(self.cases) * (2 if alone else 1)


def plan_all(scenarios: list[Scenario], entries: list[dict[str, Any]], caps: Capabilities, solo_mode: Isolation,
             counterfactual: bool, solo: bool, policy: str, skipped: dict[str, str],
             nonces: dict[str, str]) -> list[Planned]:
    """Plan every scenario the target can run; the others go to `skipped` (name -> why), the
    run's nonce of each planned one to `nonces`."""
    _, adapters = split_models(entries)
    api = caps.openapi.value
    fields = (api.get("completions") or []) if isinstance(api, dict) else []
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
        cases = build_cases(sc, runs[0].plans, fields, models, runs[0].salts, adapters) if sc.adversary else []
        planned.append(Planned(sc, runs, cases))
    return planned


async def drive_planned(client: TargetClient, hostile: TargetClient, entries: list[dict[str, Any]],
                        planned: list[Planned], sink: Sink, console: Console,
                        restart: Callable[[], object] | None) -> None:
    """Drive every planned scenario in order (raises TargetDown if the target stops answering)."""
    base_model, _ = split_models(entries)
    total = sum(p.requests for p in planned)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("requests", total=total)
        opts = DriverOptions(on_op=lambda op: progress.advance(task), restart=restart)
        sink.append(await metrics_snapshot(client, "before"))
        for p in planned:
            sc, adversary = p.scenario, p.scenario.adversary
            for spec in p.runs:
                progress.update(task, description=f"{sc.name} [{spec.run}]")
                if Role.of_run(spec.run) is Role.MAIN and p.cases and adversary:
                    await asyncio.gather(drive_run(client, spec, sink, opts),
                                         run_adversary(hostile, sc, p.cases, base_model, sink, Role.ADVERSARY,
                                                       adversary.concurrency, opts.on_op))
                else:
                    await drive_run(client, spec, sink, opts)
            if p.cases and adversary and adversary.alone:
                progress.update(task, description=f"{sc.name} [{Role.ADVERSARY_ALONE.value}]")
                await run_adversary(hostile, sc, p.cases, base_model, sink, Role.ADVERSARY_ALONE, 1, opts.on_op)
            if p.cases:
                sink.append(await health_op(client, sc, base_model))
        sink.append(await metrics_snapshot(client, "after", settle=True))


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
