"""Drive one run of a scenario against a target with real concurrency, recording a history.

Turns stay in order within a conversation; across users the schedule decides: `lockstep`
(everyone's turn k, then k+1), `random` (a seeded order, up to `concurrency` in flight) or
`burst` (everyone's next turn at once). Every request, failed or not, becomes an Operation.
A solo replay runs each conversation alone, one request at a time, with no cache reuse: a fresh
cache salt per request, a cache reset before each request, or (where the harness launched the
server) a fresh server process before each request.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import gc
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

from harness.client import GenerationRequest, GenerationResult, TargetClient
from harness.driver.gate import Gate
from harness.driver.sink import Sink
from harness.history.record import LIFE_END, LIFE_START, Operation, RunInfo
from harness.probe.needs import Isolation
from harness.scenario.model import Scenario
from harness.scenario.render import UserPlan, request_seed

_EPOCH = time.monotonic()  # one clock for every run of a process, so histories order across runs


def now() -> float:
    return time.monotonic() - _EPOCH


class TargetDown(RuntimeError):
    """The target stopped answering (consecutive connection failures); the run was abandoned."""


@dataclass
class RunSpec:
    """One run to drive: which scenario, which content plans, how requests are salted."""

    run: str
    scenario: Scenario
    plans: list[UserPlan]
    nonce: str
    models: dict[str, str]  # user -> model/adapter name to send
    salts: dict[str, str | None]  # user -> cache salt of its tenant (None: no salt)
    isolation: Isolation = "shared"
    note: str = ""
    requires_cross_user_hits: bool = False


class NemesisHook(Protocol):
    """What acts on the server between operations (`harness.nemesis.runner.NemesisRunner`): called
    before each run, before each operation is launched (with its index in the run's launch order,
    and a `drain` that waits for every request in flight), and after each run. Requests sent
    beside the run (the adversary's) pass through its `gate`, closed while it acts."""

    gate: Gate

    async def run_started(self, spec: RunSpec) -> None: ...

    async def before(self, spec: RunSpec, user: str, turn: int, index: int,
                     drain: Callable[[], Awaitable[object]]) -> None: ...

    async def run_ended(self, spec: RunSpec) -> None: ...


@dataclass
class DriverOptions:
    max_consecutive_connection_failures: int = 8
    on_op: Callable[[Operation], None] | None = None
    run_id: str = field(default_factory=lambda: secrets.token_hex(4))
    restart: Callable[[], object] | None = None
    """Starts a fresh server process (blocking); needed by runs with isolation "restart"."""
    nemesis: NemesisHook | None = None
    """Acts on the server by operation index (docs/design.md, "Nemeses")."""
    snapshot: Callable[[TargetClient, str], Awaitable[None]] | None = None
    """Records the server's counters under a label: called with LIFE_END before each restart and
    LIFE_START once the fresh server answers, so `server-counters` can add up each life."""


def build_request(spec: RunSpec, plan: UserPlan, turn: int, outputs: list[str], salt: str | None) -> GenerationRequest:
    """The request for `turn` of a conversation, whose earlier replies are `outputs`."""
    sc = spec.scenario
    seed = request_seed(sc, plan.user, turn) if sc.sampling.mode == "seeded" else None
    temperature = sc.sampling.temperature if sc.sampling.mode == "seeded" else 0.0
    common = dict(
        model=spec.models[plan.user],
        max_tokens=sc.max_tokens,
        temperature=temperature,
        seed=seed,
        top_logprobs=sc.top_logprobs,
        stream=plan.stream,
        cache_salt=salt,
        headers={"X-Harness-User": plan.user, "X-Harness-Tenant": plan.tenant,
                 "X-Harness-Op": f"{spec.run}/{sc.name}/{plan.user}/{turn}"},
    )
    if sc.endpoint == "completions":
        parts = [plan.system_text]
        for t in range(turn):
            parts += [plan.turn_texts[t], outputs[t]]
        parts.append(plan.turn_texts[turn])
        return GenerationRequest(endpoint="completions", prompt="".join(parts), **common)  # type: ignore[arg-type]
    messages = [{"role": "system", "content": plan.system_text.strip()}]
    for t in range(turn):
        messages += [{"role": "user", "content": plan.turn_texts[t].strip()},
                     {"role": "assistant", "content": outputs[t].strip()}]
    messages.append({"role": "user", "content": plan.turn_texts[turn].strip()})
    return GenerationRequest(endpoint="chat", messages=messages, **common)  # type: ignore[arg-type]


class _Run:
    def __init__(self, client: TargetClient, spec: RunSpec, history: Sink, opts: DriverOptions) -> None:
        self.client, self.spec, self.history, self.opts = client, spec, history, opts
        self.outputs: dict[str, list[str]] = {p.user: [] for p in spec.plans}
        self.failed_users: set[str] = set()
        self.consecutive_conn_failures = 0
        self.lock = asyncio.Lock()  # serialises solo replays' reset+request pairs

    async def one(self, plan: UserPlan, turn: int) -> None:
        spec = self.spec
        salt = spec.salts.get(plan.user)
        if spec.isolation == "salt":
            salt = "solo-" + secrets.token_hex(8)
        if spec.isolation == "reset":
            await self.client.reset_prefix_cache()
        req = build_request(spec, plan, turn, self.outputs[plan.user], salt)
        if spec.isolation == "restart":
            result, invoke, complete = await self._on_fresh_server(req)
        else:
            invoke = now()
            result = await self.client.generate(req)
            complete = now()
        op = Operation.from_result(
            result,
            run=spec.run, scenario=spec.scenario.name, op_id=req.headers["X-Harness-Op"],
            user=plan.user, tenant=plan.tenant, turn=turn, model=req.model, endpoint=req.endpoint,
            stream=req.stream, cache_salt=salt, request=req.body(), invoke_s=invoke, complete_s=complete,
        )
        self.history.append(op)
        if self.opts.on_op:
            self.opts.on_op(op)
        if result.ok:
            self.consecutive_conn_failures = 0
            self.outputs[plan.user].append(result.output_text)
        else:
            # A conversation cannot continue past a failed turn: its next prompt would be unknown.
            self.failed_users.add(plan.user)
            if result.status is None:
                self.consecutive_conn_failures += 1
                if self.consecutive_conn_failures >= self.opts.max_consecutive_connection_failures:
                    raise TargetDown(f"target stopped answering: {result.error}")

    async def _on_fresh_server(self, req: GenerationRequest) -> tuple[GenerationResult, float, float]:
        """Restart the server, then send `req` on a new connection (the old ones died with it)."""
        if self.opts.restart is None:
            raise ValueError(f"run {self.spec.run!r} needs a server restart hook (isolation 'restart')")
        if self.opts.snapshot:
            await self.opts.snapshot(self.client, LIFE_END)
        await asyncio.to_thread(self.opts.restart)
        async with TargetClient(self.client.base_url, timeout_s=self.client.timeout_s, keepalive=False) as fresh:
            if self.opts.snapshot:
                await self.opts.snapshot(fresh, LIFE_START)
            invoke = now()
            result = await fresh.generate(req)
            return result, invoke, now()

    def order(self) -> list[tuple[UserPlan, int]]:
        return launch_order(self.spec)

    def leaders(self) -> dict[str, str]:
        """Follower -> leader: of the users with the same cache domain (model, salt) and prompt start,
        the first in plan order leads; each other one's turn waits for the leader's same turn
        (`Schedule.leaders_first`)."""
        first: dict[tuple[str, str | None, str], str] = {}
        follows: dict[str, str] = {}
        for p in self.spec.plans:
            key = (self.spec.models[p.user], self.spec.salts.get(p.user), p.system_text)
            leader = first.setdefault(key, p.user)
            if leader != p.user:
                follows[p.user] = leader
        return follows

    async def drive(self) -> None:
        spec, sched = self.spec, self.spec.scenario.schedule
        nemesis = self.opts.nemesis
        if spec.isolation != "shared":
            index = 0
            for plan in spec.plans:  # each conversation alone, one request at a time
                for turn in range(len(plan.turn_texts)):
                    if plan.user in self.failed_users:
                        break
                    if nemesis is not None:
                        await nemesis.before(spec, plan.user, turn, index, _nothing_to_drain)
                    index += 1
                    await self.one(plan, turn)
            return
        limit = len(spec.plans) if sched.interleaving == "burst" else sched.concurrency
        sem = asyncio.Semaphore(limit)
        done: dict[tuple[str, int], asyncio.Event] = {
            (p.user, t): asyncio.Event() for p in spec.plans for t in range(len(p.turn_texts))
        }
        turn_done: dict[int, list[asyncio.Event]] = {}
        for (_user, t), ev in done.items():
            turn_done.setdefault(t, []).append(ev)
        tasks: list[asyncio.Task[None]] = []
        failures: list[tuple[int, asyncio.Task[None]]] = []  # (launch index, task) of tasks that raised
        waited_turn = -1  # lockstep: the last turn whose requests have all been awaited

        leaders = self.leaders() if sched.leaders_first else {}

        async def launch(plan: UserPlan, turn: int) -> None:
            try:
                leader = leaders.get(plan.user)
                if leader is not None and (leader, turn) in done:
                    await done[(leader, turn)].wait()
                if plan.user not in self.failed_users:
                    await self.one(plan, turn)
            finally:
                sem.release()
                done[(plan.user, turn)].set()

        async def drain() -> None:
            await asyncio.gather(*tasks)

        try:
            for index, (plan, turn) in enumerate(self.order()):
                if turn > 0:
                    await done[(plan.user, turn - 1)].wait()
                    if sched.interleaving == "lockstep" and waited_turn < turn - 1:
                        await asyncio.gather(*(ev.wait() for ev in turn_done[turn - 1]))
                        waited_turn = turn - 1
                if nemesis is not None:
                    await nemesis.before(spec, plan.user, turn, index, drain)
                await sem.acquire()
                task = asyncio.create_task(launch(plan, turn))
                task.add_done_callback(functools.partial(_note_failure, failures, len(tasks)))
                tasks.append(task)
                if failures:  # collected as tasks finish, instead of rescanning every task per launch
                    raise min(failures, key=lambda f: f[0])[1].exception()  # type: ignore[misc]
            await asyncio.gather(*tasks)
        finally:
            for pending in tasks:
                pending.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def launch_order(spec: RunSpec) -> list[tuple[UserPlan, int]]:
    """The order in which a shared run launches (user plan, turn): `lockstep` and `burst` turn by
    turn, `random` a seeded draw. Runs of one scenario with the same users and turn counts (the
    main run and its counterfactual re-runs) launch in the same order."""
    sched = spec.scenario.schedule
    plans = spec.plans
    if sched.interleaving in ("lockstep", "burst"):
        turns = max(len(p.turn_texts) for p in plans)
        return [(p, t) for t in range(turns) for p in plans if t < len(p.turn_texts)]
    rng = random.Random(sched.seed)
    remaining = {p.user: 0 for p in plans}
    by_user = {p.user: p for p in plans}
    users = sorted(remaining)  # kept sorted as users finish: the same draws as sorting every time
    order: list[tuple[UserPlan, int]] = []
    while remaining:
        user = rng.choice(users)
        order.append((by_user[user], remaining[user]))
        remaining[user] += 1
        if remaining[user] >= len(by_user[user].turn_texts):
            del remaining[user]
            del users[bisect.bisect_left(users, user)]
    return order


async def _nothing_to_drain() -> None:
    """The solo replay sends one request at a time: nothing is in flight between two."""


def _note_failure(failures: list[tuple[int, asyncio.Task[None]]], index: int, task: asyncio.Task[None]) -> None:
    """Done callback: remember a task that raised, with its launch index."""
    if not task.cancelled() and task.exception():
        failures.append((index, task))


async def drive_run(client: TargetClient, spec: RunSpec, history: Sink, opts: DriverOptions | None = None) -> None:
    """Record the run's RunInfo, then drive every conversation; raises TargetDown if the target dies."""
    history.append(
        RunInfo(
            run=spec.run, scenario=spec.scenario.name, nonce=spec.nonce, seed=spec.scenario.seed,
            variants={p.user: p.variant for p in spec.plans},
            canaries={p.user: p.canaries for p in spec.plans},
            tenants={p.user: p.tenant for p in spec.plans},
            models=dict(spec.models), isolation=spec.isolation, note=spec.note,
            requires_cross_user_hits=spec.requires_cross_user_hits,
        )
    )
    opts = opts or DriverOptions()
    if opts.nemesis is not None:
        await opts.nemesis.run_started(spec)
    with _fewer_collections():
        await _Run(client, spec, history, opts).drive()
    if opts.nemesis is not None:
        await opts.nemesis.run_ended(spec)


@contextmanager
def _fewer_collections(gen0: int = 50_000) -> Iterator[None]:
    """Run the cyclic garbage collector less often while driving. Each request allocates
    thousands of short-lived objects (freed by reference counting), so at Python's default
    threshold the collector runs every few requests and walks the ever longer history: about a
    tenth of the driver's CPU per request (bench/README.md). Restored when the last of any
    concurrent runs ends."""
    global _gc_depth, _gc_saved
    if _gc_depth == 0:
        _gc_saved = gc.get_threshold()
        gc.set_threshold(max(_gc_saved[0], gen0), *_gc_saved[1:])
    _gc_depth += 1
    try:
        yield
    finally:
        _gc_depth -= 1
        if _gc_depth == 0:
            gc.set_threshold(*_gc_saved)


_gc_depth = 0
_gc_saved: tuple[int, ...] = gc.get_threshold()
