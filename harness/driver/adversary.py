"""The adversarial tenant: every field a client controls, hostile values, alone and under load.

Cases come from the target's own OpenAPI request schema (not a hand-kept list), plus collision
attempts: other tenants' salts and names, adapter and model names, empty, very long and
non-ASCII strings, prompts cut around cache-block boundaries of a victim's shared prefix.
Phase `adversary` fires every case concurrently with the victims' main run (many serving bugs
need a shared batch); phase `adversary-alone` replays each case alone afterwards, so a crash is
attributable to one case. Expected behaviour: a clean 4xx for invalid input or a normal answer;
never a 5xx, a dropped connection or a dead server (checked by `availability`), and no effect on
anyone else's outputs (checked by the output checks on the victims).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from harness.client import GenerationRequest, TargetClient
from harness.driver.driver import now
from harness.driver.sink import Sink
from harness.history.record import Operation, Role
from harness.scenario.model import Scenario
from harness.scenario.render import UserPlan

# Fields whose hostile values are also other tenants' identifiers.
IDENTITY_FIELDS = ("cache_salt", "user", "request_id", "session_id", "model")
LONG = "x" * 10_000
UNICODE = "\u202etenant-\u00df-\u79df\u6237-\U0001f642\u0000end"


@dataclass(frozen=True)
class Case:
    name: str
    overrides: dict[str, Any]
    prompt: str | None = None  # replaces the adversary's own prompt (collision attempts)
    victim: str | None = None
    """The user whose own cache salt and shared context this case sends (a cut of the victim's
    prefix under the victim's salt): sharing by design, reported as a finding."""


def generic_values() -> list[tuple[str, Any]]:
    return [("null", None), ("empty", ""), ("negative", -1), ("huge", 2**63), ("list", [1]),
            ("object", {"x": 1}), ("long", LONG), ("unicode", UNICODE)]


def build_cases(scenario: Scenario, plans: list[UserPlan], fields: list[str], models: dict[str, str],
                salts: dict[str, str | None], adapters: list[str]) -> list[Case]:
    """Every hostile case for one scenario; deterministic for a given scenario and listing."""
    # The adversary's own prompt starts with the run's nonce like every other prompt, so no cache
    # entry from an earlier run can explain (or hide) a hit.
    own = plans[0].system_text.split(" ")[:4] if plans else []
    own_prompt = " ".join(own) + " adversary probe with a few words of its own"
    cases = [Case(f"{f}={label}", {f: value}, own_prompt) for f in fields for label, value in generic_values()]
    others: list[tuple[str, Any]] = []
    for t in scenario.tenants:
        others.append((f"tenant-name:{t.name}", t.name))
    for user, salt in sorted(salts.items()):
        if salt:
            others.append((f"salt-of:{user}", salt))
    for m in sorted(set(models.values()) | set(adapters)):
        others.append((f"model-name:{m}", m))
    for f in IDENTITY_FIELDS:
        if f in fields or f in ("cache_salt", "model"):
            cases += [Case(f"{f}={label}", {f: value}, own_prompt) for label, value in others]
    # Prompts cut around block boundaries of each victim's shared context, sent with the victim's
    # own salt (sharing by design: a finding, not a FAIL) and with the adversary's salt.
    for plan in plans:
        words = plan.system_text.split(" ")
        for cut in (31, 32, 33):
            if len(words) > cut:
                prompt = " ".join(words[: cut + 1]) + " adversary probe"
                victim_salt = salts.get(plan.user)
                cases.append(Case(f"boundary-{cut}:{plan.user}", {}, prompt))
                if victim_salt:
                    cases.append(Case(f"boundary-{cut}-victim-salt:{plan.user}", {"cache_salt": victim_salt}, prompt,
                                      victim=plan.user))
        break  # one victim's context is enough per scenario
    return cases


async def run_adversary(client: TargetClient, scenario: Scenario, cases: list[Case], base_model: str,
                        history: Sink, role: Role, concurrency: int,
                        on_op: Callable[[Operation], None] | None = None) -> None:
    """Send every case (concurrently up to `concurrency`); each result becomes an Operation of
    the run named after `role` (adversary or adversary-alone)."""
    phase = role.value
    own_salt = "adversary-" + secrets.token_hex(6)
    sem = asyncio.Semaphore(concurrency)
    tenant = scenario.adversary.tenant if scenario.adversary else "adversary"

    async def one(case: Case) -> None:
        async with sem:
            prompt = case.prompt or " adversary probe with a few words of its own"
            req = GenerationRequest("completions", base_model, prompt=prompt, max_tokens=4, top_logprobs=0,
                                    cache_salt=own_salt, extra=dict(case.overrides),
                                    headers={"X-Harness-User": tenant, "X-Harness-Tenant": tenant,
                                             "X-Harness-Op": f"{phase}/{scenario.name}/{case.name}"})
            invoke = now()
            result = await client.generate(req)
            body = req.body()
            op = Operation.from_result(
                result, run=phase, scenario=scenario.name, op_id=f"{phase}/{scenario.name}/{case.name}",
                user=tenant, tenant=tenant, turn=0, model=str(body.get("model")), endpoint="completions",
                stream=bool(body.get("stream")), cache_salt=body.get("cache_salt") if isinstance(
                    body.get("cache_salt"), str) else None,
                request=_printable(body), invoke_s=invoke, complete_s=now(), borrowed_salt_of=case.victim)
            history.append(op)
            if on_op:
                on_op(op)

    await asyncio.gather(*(one(c) for c in cases))


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


def _printable(body: dict[str, Any]) -> dict[str, Any]:
    """The body as sent, with very long strings shortened so the history stays small."""
    return {k: (v[:64] + f"...({len(v)} chars)" if isinstance(v, str) and len(v) > 256 else v) for k, v in body.items()}
