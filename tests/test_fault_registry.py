"""Adding a fault is one new module plus one registration line: a trivial fault defined here (the
whole of its module) is applied by the proxy, recorded in the history as `FaultInjection`s through
`FaultedStack`, listed by `harness proxy --list` and run by the selftest. Against a scripted fake
upstream; no server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from harness.client import GenerationRequest, TargetClient
from harness.faults import REGISTRY, Fault, all_faults, register
from harness.faults.exchange import Call, Captured
from harness.faults.stack import FaultedStack
from harness.frontends.cli import main as cli_main
from harness.frontends.commands import selftest as st
from harness.history.record import FaultInjection, History
from harness.probe.capabilities import Capabilities, Capability
from harness.result import RunMeta, RunResult
from harness.stacks.base import Stack
from harness.stacks.external import ExternalStack
from harness.verdict import CheckResult, Verdict, Violation, decide
from tests.factories import ample_evidence
from tests.scripted import serve_app

# --- the example fault: everything a new fault module holds ------------------------------------


class Shout(Fault):
    name = "shout"
    changes = "Upper-cases the output text of every completion."
    models = "a detokenizer that applies another request's text transform."
    detected_by = "cache transparency"
    detectors = ("cache-transparency",)
    scenarios = ("burst.yaml",)
    edits_response = True

    async def on_response(self, call: Call, cap: Captured) -> Captured:
        if not cap.usable or cap.payloads is None or not self.ctx.draw():
            return cap
        for payload in cap.payloads:
            for choice in payload.get("choices") or []:
                choice["text"] = str(choice.get("text", "")).upper()
        cap.modified = True
        self.ctx.record(call, "upper-cased the text")
        return cap


@pytest.fixture
def shout() -> Iterator[type[Fault]]:
    register(Shout)  # the one registration line (in harness/faults/__init__.py: one import)
    try:
        yield Shout
    finally:
        REGISTRY.pop(Shout.name)


# --- a scripted upstream ---------------------------------------------------------------------------


async def _completions(request: web.Request) -> web.Response:
    body = await request.json()
    return web.json_response({
        "model": body.get("model"),
        "choices": [{"index": 0, "text": " hello world", "token_ids": [5, 6], "finish_reason": "length",
                     "logprobs": None}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 0}},
    })


async def _generate(op: str) -> str:
    app = web.Application()
    app.router.add_post("/v1/completions", _completions)
    runner, url = await serve_app(app)
    try:
        faulted = FaultedStack(ExternalStack(url), "shout", seed=1)
        await asyncio.to_thread(faulted.start)
        try:
            async with TargetClient(faulted.base_url, timeout_s=30) as client:
                req = GenerationRequest("completions", "m", prompt="p", top_logprobs=0,
                                        headers={"X-Harness-Op": op, "X-Harness-User": "u1"})
                result = await client.generate(req)
            assert result.ok, result.error
            events = faulted.events()
            assert faulted.events() == [], "events() gives what is new since the last call"
        finally:
            await asyncio.to_thread(faulted.stop)
    finally:
        await runner.cleanup()
    assert len(events) == 1 and isinstance(events[0], FaultInjection)
    inj = events[0]
    assert (inj.fault, inj.op_id, inj.user, inj.action) == ("shout", op, "u1", "upper-cased the text")
    assert inj.details["seq"] == 1 and inj.details["path"] == "/v1/completions"
    return result.output_text


async def test_the_proxy_applies_a_registered_fault_and_the_stack_records_it(shout: type[Fault]) -> None:
    text = await _generate("op-7")
    assert text == " HELLO WORLD"


def test_faulted_stack_is_a_stack() -> None:
    stack = FaultedStack(ExternalStack("http://127.0.0.1:9"), "flip")
    assert isinstance(stack, Stack)
    assert stack.traits == ExternalStack("http://127.0.0.1:9").traits and stack.events() == []
    assert not stack.alive, "not alive before start: the engine starts it (and so the proxy)"
    with stack:
        assert stack.alive and stack.base_url.startswith("http://127.0.0.1:")
    assert not stack.alive


def test_the_proxy_command_and_the_selftest_list_a_registered_fault(
        shout: type[Fault], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["proxy", "--list"]) == 0
    assert "shout" in capsys.readouterr().out

    async def probe(target: str) -> Capabilities:
        caps = Capabilities(target="http://fake")
        for name in ("output_token_ids", "cached_tokens", "cache_salt_effective", "cache_reset",
                     "prefix_cache_metrics"):
            setattr(caps, name, Capability(True, True, "seen"))
        caps.logprobs = Capability(True, 20, "20 per position")
        return caps

    ran: list[tuple[str, tuple[str, ...]]] = []

    def run_fault(name: str, target: str, scenarios: Path, out_dir: Path, seed: int,
                  files: list[str] | None = None, **_: object) -> tuple[RunResult, int]:
        fault = next(f for f in all_faults() if f.name == name)
        ran.append((name, fault.scenarios))
        # a fault's first detector FAILs with a violation citing the request the proxy changed; a
        # blinding fault's detector cannot decide
        detector = fault.detectors[0] if fault.kind != "benign" and fault.detectors else None
        bad = Verdict.UNKNOWN if fault.kind == "blind" else Verdict.FAIL
        checks: list[Any] = [
            CheckResult(c, bad, violations=[Violation(c, "s", "m", ["u"], ["op-1"])] * (bad is Verdict.FAIL))
            if c == detector else CheckResult(c, Verdict.PASS, exercised=4, evidence=ample_evidence(c))
            for c in ("cache-transparency", "canary", detector) if c]
        history = History([FaultInjection(name, 1.0, "op-1")])
        return RunResult(decide(checks), [], history, RunMeta(requests=4)), 2

    monkeypatch.setattr(st, "_probe", probe)
    monkeypatch.setattr(st, "run_fault", run_fault)
    assert cli_main(["selftest", "--target", "http://127.0.0.1:9", "--report-dir", str(tmp_path),
                     "--no-timing"]) == 0
    assert ("shout", ("burst.yaml",)) in ran
    data = json.loads((tmp_path / "selftest.json").read_text())
    assert data["faults"]["shout"]["detected_by"] == ["cache-transparency"] and data["faults"]["shout"]["good"]
