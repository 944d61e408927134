"""The nemesis's gate (`harness.driver.gate`): while a drained act runs (a restart), the
adversarial tenant sends nothing and has nothing in flight, so its budget is not spent on a server
that is down. Without it the selftest's `crash-combo` row under `restart` was never injected: 294
of its hostile requests met the restarting server."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from harness.driver.gate import Gate
from harness.engine import RunOptions
from harness.history.record import NemesisAction
from harness.verdict import Verdict
from tests import fake_stack
from tests.fake_stack import FakeStack
from tests.test_adversary import DOC, SCENARIO, run_files

DOWNTIME_S = 0.5
"""How long the fake stays down in a restart (a real server's restart takes about a minute)."""


class SlowRestart(FakeStack):
    """The fake with a server that is away for a while when restarted, as a real one is."""

    def restart(self) -> str:
        self.stop()
        time.sleep(DOWNTIME_S)  # the modelled downtime, not synchronisation
        return super().restart()


def test_gate_holds_passages_during_an_act_and_the_act_waits_for_those_in_flight() -> None:
    async def scenario() -> list[str]:
        gate, log = Gate(), []
        release = asyncio.Event()

        async def request(name: str, until: asyncio.Event | None = None) -> None:
            async with gate.passage():
                log.append(f"{name} in")
                if until is not None:
                    await until.wait()
                log.append(f"{name} out")

        # `asyncio.sleep(0)` below is one turn of the event loop (each task started runs to its
        # first wait), which fixes the order of arrival; no time is waited for
        first = asyncio.create_task(request("r1", release))
        await asyncio.sleep(0)  # r1 passes
        async def act() -> None:
            async with gate.closed():
                log.append(f"act (in flight {gate.in_flight})")
        acting = asyncio.create_task(act())
        await asyncio.sleep(0)
        second = asyncio.create_task(request("r2"))  # arrives while the act waits: held
        await asyncio.sleep(0)
        release.set()
        await asyncio.gather(first, acting, second)
        return log

    assert asyncio.run(scenario()) == ["r1 in", "r1 out", "act (in flight 0)", "r2 in", "r2 out"]


def test_no_hostile_request_meets_a_restart(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    port = fake_stack.free_port()
    monkeypatch.setattr(fake_stack, "free_port", lambda: port)  # restarted on the same port
    stack = SlowRestart(tokens=4, documents={"/openapi.json": DOC}, service_s=0.05)
    opts = RunOptions(counterfactual=False, solo=False, calibration_repeats=0, nemesis=("restart",))
    with stack:
        out = run_files([SCENARIO], stack, opts, tmp_path)
    acts = [e for e in out.history.events if isinstance(e, NemesisAction) and e.action == "restart"]
    assert acts and all(a.took_effect for a in acts)
    hostile = [o for o in out.history.ops if o.run == "adversary"]
    assert hostile
    for a in acts:
        sent = float(a.details["sent_s"])
        overlapping = [o.op_id for o in hostile if o.invoke_s < a.at_s and o.complete_s > sent]
        assert not overlapping, f"hostile requests in flight during the restart: {overlapping[:5]}"
    assert not [o.op_id for o in hostile if o.status is None], "a hostile request met the server down"
    availability = out.check("availability")
    assert availability is not None and availability.verdict is Verdict.PASS, availability.notes
