"""The nemesis beside the driver: applies each run's schedule by operation index and records
every act as a `NemesisAction` (and a restart, through the stack, as an `Incident` the harness
caused).

The main run and the counterfactual re-runs launch the same operations in the same order, so they
get the same steps at the same indices. The solo replay sends each conversation alone; it takes no
cache resets or restarts (it is cache-free by construction), but each of its requests is sent with
the adapters holding the weights they held when the main run launched that request, so the
reference is computed by the same weights.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from harness.driver.driver import RunSpec, launch_order, now
from harness.driver.gate import Gate
from harness.driver.sink import Sink
from harness.history.record import NemesisAction, Role
from harness.nemesis import CONFIG_NEMESES, adapter_churn, cache_reset, memory_pressure
from harness.nemesis.schedule import Step, adapter_state, build_schedule


class NemesisRunner:
    """Implements the driver's nemesis hook (`harness.driver.driver.NemesisHook`) for `names`."""

    def __init__(self, names: tuple[str, ...], base_url: str, sink: Sink, *,
                 restart: Callable[[], object] | None = None, adapters: dict[str, Path] | None = None,
                 timeout_s: float = 60.0, disruptive_ok: bool = True) -> None:
        self.names = names
        self.disruptive_ok = disruptive_ok
        self.sink = sink
        self.restart_fn = restart
        self.sources = dict(sorted((adapters or {}).items()))
        self.digests = {n: adapter_churn.weights_digest(p) for n, p in self.sources.items()}
        self.http = httpx.AsyncClient(base_url=base_url, timeout=timeout_s)
        self.state = {n: n for n in self.sources}
        self._schedules: dict[str, list[Step]] = {}
        self._counters: dict[str, float] | None = None
        self._initial_recorded = False
        self._enabled: set[str] = set()
        self._positions: dict[str, dict[tuple[str, int], int]] = {}
        self.gate = Gate()
        """Closed during a drained act: the adversary's hostile requests hold off, and the act waits
        for those in flight (`harness.driver.gate`)."""

    async def aclose(self) -> None:
        await self.http.aclose()

    def schedule(self, spec: RunSpec) -> list[Step]:
        """The steps of `spec`'s scenario (one schedule for all its runs)."""
        name = spec.scenario.name
        if name not in self._schedules:
            n_ops = sum(len(p.turn_texts) for p in spec.plans)
            names = self.names_for(spec)
            self._schedules[name] = build_schedule(tuple(n for n in names if n not in CONFIG_NEMESES), n_ops,
                                                   spec.scenario.seed, tuple(self.sources))
        return self._schedules[name]

    def names_for(self, spec: RunSpec) -> tuple[str, ...]:
        """The nemeses of the run and of the scenario."""
        return tuple(dict.fromkeys([*self.names, *spec.scenario.nemesis]))

    # --- the hook -----------------------------------------------------------------------------

    async def run_started(self, spec: RunSpec) -> None:
        """Before a run's first request: the adapters hold their own weights again, and the
        pressure counters are read."""
        names = self.names_for(spec)
        for name in names:
            if name not in self._enabled:
                self._enabled.add(name)
                self.sink.append(NemesisAction(name, now(), "enabled", details={"scenario": spec.scenario.name}))
        if "adapter-churn" in names and not self.sources:
            self.sink.append(NemesisAction("adapter-churn", now(), "initial", took_effect=False, details={
                **self._where(spec, None), "why": "no adapter folders on the server are known (the embedded "
                "server's own, or RunOptions.adapter_sources)"}))
        if "adapter-churn" in names and self.sources:
            if not self._initial_recorded:
                self.sink.append(adapter_churn.initial(self.sources, self.digests))
                self._initial_recorded = True
            await self._ensure({n: n for n in self.sources}, spec, None)
        if "memory-pressure" in names:
            self._counters = await memory_pressure.read_counters(self.http)

    async def run_ended(self, spec: RunSpec) -> None:
        if "memory-pressure" in self.names_for(spec):
            after = await memory_pressure.read_counters(self.http)
            self.sink.append(memory_pressure.observed(self._counters, after, self._where(spec, None)))

    async def before(self, spec: RunSpec, user: str, turn: int, index: int,
                     drain: Callable[[], Awaitable[object]]) -> None:
        """Before operation `index` (`user`'s `turn`) of `spec` is launched."""
        steps = self.schedule(spec)
        if not steps:
            return
        if Role.of_run(spec.run) is Role.SOLO:
            main_index = self._main_index(spec, user, turn)
            await self._ensure(adapter_state(steps, main_index, tuple(self.sources)), spec, main_index)
            return
        due = [s for s in steps if s.index == index]
        drained = any(s.drain for s in due)
        # a drained act: no hostile request in flight or sent until the acts are done
        async with self.gate.closed() if drained else contextlib.nullcontext():
            if drained:
                await drain()
            for s in due:
                await self._act(s, spec, index)

    # --- acts ---------------------------------------------------------------------------------

    async def _act(self, step: Step, spec: RunSpec, index: int) -> None:
        where = self._where(spec, index)
        if not self.disruptive_ok:
            why = "the harness did not launch the target and disruptive acts were not allowed"
            self.sink.append(NemesisAction(step.nemesis, now(), step.action, took_effect=False,
                                           details={**where, **step.args, "why": why}))
            return
        if step.nemesis == "cache-reset":
            self.sink.append(await cache_reset.reset(self.http, where))
        elif step.nemesis == "adapter-churn":
            await self._swap(step.args["adapter"], step.args["weights_of"], where)
        elif step.nemesis == "restart":
            await self._restart(where)

    async def _swap(self, name: str, weights_of: str, where: dict[str, object]) -> None:
        if name not in self.sources or weights_of not in self.sources:
            return
        for rec in await adapter_churn.swap(self.http, name, weights_of, self.sources, self.digests, where):
            self.sink.append(rec)
        self.state[name] = weights_of

    async def _ensure(self, target: dict[str, str], spec: RunSpec, index: int | None) -> None:
        """Swap every adapter whose weights differ from `target` (name -> whose weights)."""
        for name, weights_of in target.items():
            if self.state.get(name) != weights_of:
                await self._swap(name, weights_of, {**self._where(spec, index), "restore": True})

    async def _restart(self, where: dict[str, object]) -> None:
        sent = now()
        if self.restart_fn is None:
            why = "the harness does not own the server: it cannot restart it"
            self.sink.append(NemesisAction("restart", now(), "restart", took_effect=False,
                                           details={**where, "sent_s": sent, "why": why}))
            return
        await asyncio.to_thread(self.restart_fn)
        self.sink.append(NemesisAction("restart", now(), "restart", details={**where, "sent_s": sent}))

    # --- helpers ------------------------------------------------------------------------------

    @staticmethod
    def _where(spec: RunSpec, index: int | None) -> dict[str, object]:
        return {"run": spec.run, "scenario": spec.scenario.name, "index": index}

    def _main_index(self, spec: RunSpec, user: str, turn: int) -> int:
        """Where the main run launches `user`'s `turn` (the solo replay has the main run's plans)."""
        index = self._positions.get(spec.scenario.name)
        if index is None:
            index = self._positions[spec.scenario.name] = {
                (plan.user, t): i for i, (plan, t) in enumerate(launch_order(spec))}
        return index.get((user, turn), 0)


def embedded_adapters(stack: object) -> dict[str, Path]:
    """The adapter folders of an embedded vLLM server (looking through wrappers such as the fault
    proxy's `FaultedStack`, which keep theirs in `inner`); empty for any other stack, and for an
    embedded server launched without LoRA."""
    from harness.stacks.vllm import EmbeddedServer

    while not isinstance(stack, EmbeddedServer) and hasattr(stack, "inner"):
        stack = stack.inner
    if not isinstance(stack, EmbeddedServer) or stack.model_dir is None or not stack.lora:
        return {}
    from harness.testmodel.embedded_model import adapter_dirs

    return {n: p for n, p in adapter_dirs(Path(stack.model_dir)).items() if p.is_dir()}
