"""`prompt-echo` on hand-made histories: a response that reports another request's prompt ids FAILs
(the `stale` response cache that serves every run alike, solo included, which the differential
checks cannot see), honest echoes PASS, hostile requests are left out, and a target that echoes no
prompt ids is UNKNOWN. The fault and the real server: tests/test_selftest_fake.py and the runs on
the embedded server, where the check is part of every run."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from rich.console import Console

from harness.checks.base import CheckContext
from harness.checks.echo import prompt_echo
from harness.engine import RunOptions
from harness.faults.stack import FaultedStack
from harness.frontends.runs import run_files
from harness.history.record import FaultInjection, Operation
from harness.stacks.external import ExternalStack
from harness.verdict import CheckResult, Verdict
from tests.factories import history, info, op
from tests.fake_stack import FakeStack

LIBRARY = Path(__file__).resolve().parents[1] / "scenarios"

CTX = CheckContext(1e-3)


def judge(*ops: Operation) -> CheckResult:
    return prompt_echo(history(info("main", {"alice": 0, "bob": 0}), *ops), CTX)


def test_a_response_reporting_another_requests_prompt_fails() -> None:
    alice = op("main", "alice", [7], prompt=[5, 6, 9], request={"prompt": "doc alice asks"})
    bob = op("main", "bob", [7], prompt=[5, 6, 9], request={"prompt": "doc bob asks"})  # alice's echo
    result = judge(alice, bob)
    assert result.verdict is Verdict.FAIL
    assert result.violations[0].op_ids == [alice.op_id, bob.op_id]


def test_honest_echoes_pass_and_the_same_prompt_may_repeat() -> None:
    alice = op("main", "alice", [7], prompt=[5, 6, 9], request={"prompt": "doc alice asks"})
    again = op("cf-0", "alice", [7], prompt=[5, 6, 9], request={"prompt": "doc alice asks"})
    bob = op("main", "bob", [7], prompt=[5, 6, 10], request={"prompt": "doc bob asks"})
    result = judge(alice, again, bob)
    assert result.verdict is Verdict.PASS and result.evidence["responses"] == 3


def test_hostile_requests_are_left_out_and_no_echo_is_unknown() -> None:
    alice = op("main", "alice", [7], prompt=[5, 6, 9], request={"prompt": "doc alice asks"})
    crafted = op("adversary", "mallory", [7], prompt=[5, 6, 9], request={"prompt": "doc  alice asks"})
    assert judge(alice, crafted).verdict is Verdict.PASS
    blind = replace(op("main", "bob", [7], request={"prompt": "doc bob asks"}), prompt_token_ids=None)
    assert judge(blind).verdict is Verdict.UNKNOWN
    partly = judge(alice, blind)
    assert partly.verdict is Verdict.UNKNOWN and "without prompt token ids" in partly.notes[-1]


def test_stale_through_the_proxy_fails_prompt_echo_citing_what_it_injected(tmp_path: Path) -> None:
    """The `stale` proxy fault on the fake server: each follower answered with the first request's
    stored response, in every run alike; prompt-echo FAILs naming the injected requests."""
    with FakeStack() as fake:
        stack = FaultedStack(ExternalStack(fake.start()), "stale", rate=1.0, seed=3)
        out = run_files([LIBRARY / "shared-document.yaml"], stack, RunOptions(), tmp_path,
                        console=Console(quiet=True))
    injected = {e.op_id for e in out.history.events if isinstance(e, FaultInjection) and e.fault == "stale"}
    echo = out.check("prompt-echo")
    assert injected and echo is not None and echo.verdict is Verdict.FAIL, echo
    assert all(set(v.op_ids) & injected for v in echo.violations)
