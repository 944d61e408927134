"""The incident rule against the fake server (no model): proxy faults that harm a victim or crash
the "server" are replayed, bisected and reported as ONE availability FAIL per incident naming the
minimal group; a server killed from outside mid-run is UNKNOWN through the engine, history kept.

The fault tests drive a small, fixed burst of traffic themselves (victims of one tenant, hostile
requests of the adversarial tenant, all at once) so that what is replayed is known exactly."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

from rich.console import Console

from harness import engine
from harness.checks.availability import availability
from harness.checks.base import CheckContext
from harness.client import GenerationRequest, TargetClient
from harness.driver.driver import now
from harness.driver.sink import MemorySink
from harness.engine import RunOptions
from harness.faults.stack import FaultedStack
from harness.history.record import FaultInjection, History, Operation, TriageReplay, read_history
from harness.incidents.triage_run import triage_incidents
from harness.reporters import write_all
from harness.scenario.io import load_scenario
from harness.stacks.external import ExternalStack
from harness.verdict import Verdict
from tests.fake_stack import MODEL, FakeStack

LIBRARY = Path(__file__).resolve().parents[1] / "scenarios"
QUIET = Console(stderr=True, quiet=True)
CTX = CheckContext(tolerance=0.5)


async def _burst(base_url: str, sink: MemorySink, hostile: int = 2, victims: int = 4, model: str = MODEL) -> None:
    """Hostile requests and victims' requests, all sent at once; each becomes an Operation."""
    async def one(run: str, user: str, tenant: str, op_id: str, text: str) -> None:
        req = GenerationRequest("completions", model, prompt=text, max_tokens=8, top_logprobs=0,
                                headers={"X-Harness-User": user, "X-Harness-Tenant": tenant, "X-Harness-Op": op_id})
        invoke = now()
        result = await client.generate(req)
        sink.append(Operation.from_result(result, run=run, scenario="s", op_id=op_id, user=user, tenant=tenant,
                                          turn=0, model=model, endpoint="completions", stream=False,
                                          cache_salt=None, request=req.body(), invoke_s=invoke, complete_s=now()))

    async with TargetClient(base_url, timeout_s=30, keepalive=False) as client:
        await asyncio.gather(
            *(one("adversary", "mallory", "mallory", f"adversary/s/h{j}", f" alpha beta gamma {j}")
              for j in range(hostile)),
            *(one("main", f"v{i}", "acme", f"main/s/v{i}/0", f" delta epsilon zeta {i}") for i in range(victims)))


def faulted_burst(fault: str, *, seed: int = 1, hostile: int = 2, owned: bool = True, url: str | None = None,
                  model: str = MODEL) -> History:
    """The burst through `fault`, then the incident triage, as the engine runs it: against a fake
    server the harness owns, or (`owned=False`) a URL, replayed only with the opt-in (`url` given:
    that server, opted in)."""
    fake = FakeStack(service_s=0.05) if url is None else None  # a 50 ms engine step: replayed groups overlap
    base = fake.start() if fake is not None else str(url)
    inner = fake if owned and fake is not None else ExternalStack(base)
    stack = FaultedStack(inner, fault, rate=1.0, seed=seed, timeout_s=30)  # type: ignore[arg-type]
    stack.start()
    sink = MemorySink()
    try:
        asyncio.run(_burst(stack.base_url, sink, hostile=hostile, model=model))
        sink.records.extend(stack.events())
        asyncio.run(triage_incidents(History(list(sink.records)), stack, sink, opt_in=url is not None, timeout_s=30))
        sink.records.extend(stack.events())
    finally:
        stack.stop()
        if fake is not None:
            fake.stop()
    return History(list(sink.records))


def test_a_victims_failure_caused_by_a_hostile_request_is_a_fail_naming_the_pair() -> None:
    history = faulted_burst("victim-5xx")
    result = availability(history, CTX)
    injected = {e.op_id for e in history.events if isinstance(e, FaultInjection)}
    assert result.verdict is Verdict.FAIL and injected
    assert len(result.violations) == result.evidence["incidents"] == 1  # four victims failed: one incident
    [v] = result.violations
    assert v.message.startswith("harm to another tenant") and v.details["minimal"]
    assert v.details["causing_tenants"] == ["mallory"] and v.details["harmed_tenants"] == ["acme"]
    assert len(v.op_ids) == 2 and set(v.op_ids) & injected and v.details["status"] == 500


def test_a_poison_request_that_crashes_the_server_is_one_fail_naming_it_alone() -> None:
    history = faulted_burst("poison-request", seed=2, hostile=8)
    result = availability(history, CTX)
    crashes = {e.op_id for e in history.events if isinstance(e, FaultInjection) and e.action.startswith("crash")}
    assert result.verdict is Verdict.FAIL and crashes
    [v] = result.violations  # one crash, however many requests it took down
    assert len(v.op_ids) == 1 and v.op_ids[0] in crashes and v.details["minimal"]
    replays = [e for e in history.events if isinstance(e, TriageReplay)]
    assert replays[0].reproduced and len(replays[0].op_ids) >= 1


def test_against_a_url_without_the_opt_in_nothing_is_replayed_and_it_is_unknown() -> None:
    history = faulted_burst("victim-5xx", owned=False)
    result = availability(history, CTX)
    replays = [e for e in history.events if isinstance(e, TriageReplay)]
    assert result.verdict is Verdict.UNKNOWN and not result.violations
    assert replays and all(not r.op_ids for r in replays) and "--replay-incidents" in replays[0].note


def test_a_benign_burst_has_no_incident() -> None:
    history = faulted_burst("delay")
    result = availability(history, CTX)
    assert result.verdict is Verdict.PASS and result.evidence["incidents"] == 0
    assert not any(isinstance(e, TriageReplay) for e in history.events)


def test_a_server_killed_from_outside_is_unknown_with_one_incident_and_the_history_kept(tmp_path: Path) -> None:
    stack = FakeStack(mode="process")
    stack.start()
    history = tmp_path / "history.jsonl"
    killed = threading.Event()

    def killer() -> None:
        # Condition polling: once the run has recorded some operations, kill the server process.
        while not killed.is_set():
            if history.exists() and history.read_text().count('"kind":"op"') >= 12:
                assert stack._proc is not None
                stack._proc.proc.kill()
                killed.set()
                return
            killed.wait(0.02)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    try:
        out = engine.run([load_scenario(LIBRARY / "burst.yaml")], stack,
                         RunOptions(report_dir=tmp_path, timeout_s=30), console=QUIET)
        write_all(out, tmp_path)
    finally:
        killed.set()
        stack.stop()
    assert killed.is_set()
    assert out.verdict is Verdict.UNKNOWN and out.exit_code == 2
    avail = out.check("availability")
    assert avail is not None and avail.verdict is Verdict.UNKNOWN and not avail.violations
    assert any("not attributable to any input" in n and "history kept" in n for n in avail.notes)
    report = json.loads((tmp_path / "report.json").read_text())
    [incident] = report["metadata"]["incidents"]  # ONE event, not one per failed request
    assert not incident["reproduced"] and incident["failed"] >= 1 and incident["replays"] >= 1
    stopped = report["metadata"]["stopped"]
    assert stopped["scenario"] == "burst" and stopped["op_index"] >= 1 and "stopped answering" in stopped["reason"]
    ops = [r for r in read_history(history) if getattr(r, "kind", "") == "op"]
    assert len(ops) >= 12 and any(not o.ok for o in ops)  # type: ignore[attr-defined]
    page = (tmp_path / "report.html").read_text()
    assert "Incident:" in page and "not attributable to any input" in page and "after op" in page
