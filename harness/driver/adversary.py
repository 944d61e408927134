"""The adversarial tenant's driver: fires the planned hostile cases (`harness.adversary`) in
groups that share batches with each other and with the victims.

Identical cases go as one group of their copies at once; a boundary search sends its probes one
at a time, each value chosen from the answers so far (`harness.adversary.boundary`); the others
are packed in order into mixed groups of 2..k (k = the scenario's adversary concurrency), and up
to two groups are in flight at a time. Each request becomes an `Operation` of the run named after its role, with the
body and the fuzzed headers exactly as sent, so every replay of it (incident triage, reproducers)
is the same request. Phase `adversary-alone` replays alone, one at a time, each case of a group
in which some request got no clean answer, so a crash that needs company shows as one that does
not come back alone. Expected: a clean 4xx for invalid input or a normal answer;
never a 5xx, a dropped connection or a dead server (`availability`), and no effect on anyone
else's outputs (the output checks on the victims).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from typing import Any

from harness.adversary.boundary import Bisection, probe_name
from harness.adversary.cases import Case
from harness.client import GenerationRequest, TargetClient
from harness.driver.driver import now
from harness.driver.gate import Gate
from harness.driver.sink import Sink
from harness.history.record import Operation, Role
from harness.scenario.model import Scenario
from harness.scenario.render import UserPlan

GROUPS_IN_FLIGHT = 2
OWN_MAX_TOKENS = 8

Member = tuple[Case, int]  # (case, copy index)


def groups(cases: list[Case], k: int) -> list[list[Member]]:
    """Identical cases as one group of their copies, a boundary search as a group of its own; the
    rest packed into mixed groups whose sizes cycle 2..k (deterministic)."""
    out: list[list[Member]] = []
    pending: list[Member] = []
    size = 2
    for c in cases:
        if c.kind == "boundary":  # a search: its probes go one at a time (run_adversary)
            out.append([(c, 0)])
            continue
        if c.copies > 1:
            out.append([(c, i) for i in range(c.copies)])
            continue
        pending.append((c, 0))
        if len(pending) >= size:
            out.append(pending)
            pending = []
            size = 2 + (size - 1) % max(1, k - 1)
    if pending:
        out.append(pending)
    return out


def own_prompt(plans: list[UserPlan]) -> str:
    """The adversary's own prompt: the run's nonce first like every other prompt, so no cache
    entry from an earlier run can explain (or hide) a hit."""
    own = plans[0].system_text.split(" ")[:4] if plans else []
    return " ".join(own) + " adversary probe with a few words of its own"


def op_name(case: Case, copy: int) -> str:
    return case.name if case.copies == 1 else f"{case.name}.{copy}"


async def run_adversary(client: TargetClient, scenario: Scenario, cases: list[Case], base_model: str,
                        history: Sink, role: Role, concurrency: int, on_op: Callable[[Operation], None] | None = None,
                        prompt: str = " adversary probe with a few words of its own",
                        gate: Gate | None = None) -> list[list[Member]]:
    """Fire `cases` in groups (alone, one at a time, for ADVERSARY_ALONE); each result becomes an
    Operation of the run named after `role`. Returns the groups in which a request got no clean
    answer (a 5xx or none). Each request goes through `gate` (the nemesis's: none is sent while it
    acts on the server, `harness.driver.gate`)."""
    gate = gate or Gate()
    phase = role.value
    own_salt = "adversary-" + secrets.token_hex(6)
    tenant = scenario.adversary.tenant if scenario.adversary else "adversary"
    alone = role is Role.ADVERSARY_ALONE
    plan = [[(c, 0)] for c in cases] if alone else groups(cases, concurrency)
    sem = asyncio.Semaphore(1 if alone else GROUPS_IN_FLIGHT)
    broken: list[list[Member]] = []

    async def one(case: Case, copy: int, value: Any = None) -> Operation:
        name = op_name(case, copy)
        overrides = dict(case.overrides)
        if case.kind == "boundary":  # probe `copy` of a search sends `value` in the case's field
            name = probe_name(case, copy)
            overrides[case.fields[0][0]] = value
        text = case.prompt or prompt
        chat = case.endpoint == "chat"
        req = GenerationRequest("chat" if chat else "completions", base_model,
                                prompt=None if chat else text,
                                messages=[{"role": "user", "content": text}] if chat else None,
                                max_tokens=OWN_MAX_TOKENS, top_logprobs=0, cache_salt=own_salt,
                                extra=overrides,
                                headers={**case.headers, "X-Harness-User": tenant, "X-Harness-Tenant": tenant,
                                         "X-Harness-Op": f"{phase}/{scenario.name}/{name}"})
        async with gate.passage():
            invoke = now()
            result = await client.generate(req)
            done = now()
        body = req.body()
        salt = body.get("cache_salt")
        op = Operation.from_result(
            result, run=phase, scenario=scenario.name, op_id=f"{phase}/{scenario.name}/{name}", user=tenant,
            tenant=tenant, turn=0, model=str(body.get("model")), endpoint=req.endpoint,
            stream=bool(body.get("stream")), cache_salt=salt if isinstance(salt, str) else None,
            request=body, invoke_s=invoke, complete_s=done, borrowed_salt_of=case.victim,
            headers=dict(case.headers))
        history.append(op)
        if on_op:
            on_op(op)
        return op

    async def search(case: Case) -> list[Operation]:
        """A boundary case's probes, each value chosen from the answers so far."""
        b, ops = Bisection(case.numeric == "integer"), []
        while (value := b.next()) is not None:
            ops.append(await one(case, b.sent, value))
            if not b.answer(value, ops[-1].status):
                break
        return ops

    async def fire(group: list[Member]) -> None:
        async with sem:
            if group[0][0].kind == "boundary":
                ops = await search(group[0][0])
            else:
                ops = list(await asyncio.gather(*(one(c, i) for c, i in group)))
        if any(o.status is None or o.status >= 500 for o in ops):
            broken.append(group)

    await asyncio.gather(*(fire(g) for g in plan))
    return broken


def alone_cases(broken: list[list[Member]]) -> list[Case]:
    """Each case of a broken group once, to replay alone (order kept, no repeats)."""
    out: list[Case] = []
    for group in broken:
        for case, _ in group:
            if case not in out:
                out.append(case)
    return out


async def health_op(client: TargetClient, scenario: Scenario, model: str) -> Operation:
    """After the hostile phases: an ordinary request must still succeed (recorded as `.../health`)."""
    req = GenerationRequest("completions", model, prompt=" health check after the adversary", max_tokens=2,
                            top_logprobs=0)
    invoke = now()
    result = await client.generate(req)
    run = Role.ADVERSARY_ALONE.value
    return Operation.from_result(result, run=run, scenario=scenario.name,
                                 op_id=f"{run}/{scenario.name}/health", user="harness", tenant="harness",
                                 turn=0, model=model, endpoint="completions", stream=False, cache_salt=None,
                                 request=req.body(), invoke_s=invoke, complete_s=now())
