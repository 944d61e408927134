"""What `explore` does with one scenario: run it through the engine (through a fresh fault proxy
when a fault is injected), read the run's numbers, save a counterexample, replay a saved one, and
propose structurally simpler variants."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from harness.client import TargetClient
from harness.engine import RunOptions
from harness.faults.stack import FaultedStack
from harness.frontends.runs import run_and_report, run_files
from harness.known import KnownFinding
from harness.result import RunResult
from harness.scenario.io import dump_scenario
from harness.scenario.model import Scenario
from harness.stacks.base import Stack
from harness.stacks.external import ExternalStack
from harness.verdict import Verdict

FOUND_DIR = Path("scenarios") / "found"  # under the current folder: never inside an installed package


# --- running one scenario ---------------------------------------------------------------------------


@dataclass
class ExampleStats:
    """What one run of one scenario showed, read from its report."""

    verdict: Verdict
    requests: int
    cross_user_hits: int
    drift: int
    seconds: float
    violations: list[str]
    error: str | None
    unknown_checks: list[str] = field(default_factory=list)


def stats_of(result: RunResult, seconds: float = 0.0) -> ExampleStats:
    """Requests, cross-user cache hits (the `exercised` check's count), drift and violations."""
    exercised = result.check("exercised")
    return ExampleStats(result.verdict, result.meta.requests, exercised.exercised if exercised else 0,
                        sum(c.drift for c in result.checks), seconds,
                        [f"[{v.check}] {v.message}" for v in result.violations], result.error,
                        [c.name for c in result.checks if c.verdict is Verdict.UNKNOWN])


def run_scenario(scenario: Scenario, target: str, report_dir: Path, *, fault: str | None = None,
                 fault_seed: int = 0, counterfactual: bool = True, solo: bool = True, timeout_s: float = 60.0,
                 known_findings: tuple[KnownFinding, ...] = (), console: Console | None = None,
                 adversary_budget: int | None = None) -> RunResult:
    """Run `scenario` against `target` (through a fresh fault proxy if `fault`, its injections in the
    history), with the exact-signature known-findings baseline `known_findings`; reports in `report_dir`."""
    console = console or Console(stderr=True, quiet=True)
    stack: Stack = ExternalStack(target)
    if fault:
        stack = FaultedStack(stack, fault, rate=1.0, seed=fault_seed)
    # A scenario with an adversarial tenant draws its order of hostile values from its own seed, so
    # each example of a search sends different schema-aware values (harness.adversary.plan).
    rotation = scenario.seed + 1 if scenario.adversary else 0
    # A search runs many examples: a known finding one of them did not provoke is not re-checked
    # with its own reproducer each time (`harness.known_repro`; `kvbleed run` does that once).
    options = RunOptions(counterfactual=counterfactual, solo=solo, timeout_s=timeout_s, known_findings=known_findings,
                         adversary_budget=adversary_budget, adversary_rotation=rotation, recheck_known=False)
    return run_and_report([scenario], stack, options, report_dir, console)


@contextmanager
def target_url(target: str | None, console: Console | None = None) -> Iterator[str]:
    """The target's base URL; with None, the embedded server started for the duration."""
    if target:
        yield target.rstrip("/")
        return
    from harness.stacks.vllm import EmbeddedServer

    if console:
        console.print("starting the embedded vLLM server ...")
    with EmbeddedServer() as server:
        yield server.base_url


def adapter_roles(target: str) -> tuple[str | None, ...]:
    """None plus `adapter-1`, `adapter-2` as far as the target serves adapters."""
    from harness.plan.resolve import split_models

    async def entries() -> list[dict[str, Any]]:
        async with TargetClient(target, timeout_s=10, keepalive=False) as client:
            return await client.model_entries()

    _, adapters = split_models(asyncio.run(entries()))
    return (None, *(f"adapter-{i + 1}" for i in range(min(2, len(adapters)))))


def target_alive(target: str) -> bool:
    """The target still answers GET /v1/models."""

    async def probe() -> bool:
        async with TargetClient(target, timeout_s=10, keepalive=False) as client:
            await client.get_json("/v1/models")
            return True

    try:
        return asyncio.run(probe())
    except (httpx.HTTPError, ValueError):
        return False


# --- saving and replaying ---------------------------------------------------------------------------


def found_path(scenario: Scenario, found_dir: Path) -> Path:
    from harness.scenario.strategies import scenario_hash

    return Path(found_dir) / f"{scenario_hash(scenario)}.yaml"


def save_found(scenario: Scenario, found_dir: Path, header: str) -> Path:
    """Write the counterexample as `<found_dir>/<hash>.yaml` with `header` as its leading comment."""
    path = found_path(scenario, found_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_scenario(scenario, header))
    return path


def replay(path: Path, target: str, report_dir: Path, fault: str | None = None,
           console: Console | None = None) -> RunResult:
    """Run a saved scenario like any run (fresh nonce, every check); PASS means FIXED."""
    with ExitStack() as stack:
        url = target
        if fault:
            from harness.faults.proxy import FaultProxy

            url = stack.enter_context(FaultProxy(target, fault=fault, rate=1.0, seed=0)).url
        return run_files([Path(path)], ExternalStack(url), RunOptions(), report_dir, console=console)


# --- structural reduction ---------------------------------------------------------------------------


def reductions(scenario: Scenario) -> Iterator[Scenario]:
    """Strictly simpler variants of a scenario, biggest cuts first: one user fewer, fewer turns,
    then one dimension back to its plain value (schedule, sampling, streaming, endpoint, adapters,
    salts, shared prefixes, secrets, max_tokens). Content of the users kept does not change."""
    from harness.scenario.model import Sampling, Schedule
    from harness.scenario.strategies import with_expectation

    def variant(**update: Any) -> Scenario | None:
        try:
            data = scenario.model_dump()
            data.update(update)
            return with_expectation(Scenario.model_validate(data))
        except ValueError:
            return None

    names = [u.name for u in scenario.users]
    for name in reversed(names):
        if len(names) > 1:
            yield with_expectation(scenario.restricted_to(set(names) - {name}))
    for i, u in enumerate(scenario.users):
        if isinstance(u.private_words, list) and len(set(u.private_words)) == 1:
            users = [x.model_dump() for x in scenario.users]
            users[i].update(private_words=u.private_words[0])
            yield from filter(None, [variant(users=users)])
        for turns in sorted({1, u.turns - 1}):
            if 1 <= turns < u.turns:
                words = u.private_words if isinstance(u.private_words, int) else u.private_words[:turns]
                users = [x.model_dump() for x in scenario.users]
                users[i].update(turns=turns, private_words=words)
                yield from filter(None, [variant(users=users)])
    plain: list[dict[str, Any]] = [
        {"schedule": Schedule(concurrency=1, interleaving="lockstep").model_dump()},
        {"sampling": Sampling().model_dump()},
        {"stream": False, "users": [dict(u.model_dump(), stream=None) for u in scenario.users]},
        {"endpoint": "completions"},
        {"tenants": [dict(t.model_dump(), adapter=None) for t in scenario.tenants]},
        {"tenants": [dict(t.model_dump(), cache_salt=None) for t in scenario.tenants]},
        {"shared_prefixes": [], "users": [dict(u.model_dump(), prefixes=[]) for u in scenario.users],
         "description": "explore: none topology"},
        {"tenants": [dict(t.model_dump(), secrets=min(t.secrets, 1)) for t in scenario.tenants]},
        {"max_tokens": 4},
    ]
    current = scenario.model_dump()
    for update in plain:
        if any(current.get(k) != v for k, v in update.items() if k != "description"):
            v = variant(**update)
            if v is not None and v != scenario:
                yield v
