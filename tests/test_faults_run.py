"""Every output check can fail: a fault-injecting proxy in front of the real server makes the run
FAIL with a reproducer, while a benign fault (logprob noise far below the tolerance) must not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.engine import RunOptions
from harness.faults.stack import FaultedStack
from harness.frontends.runs import run_files
from harness.history.record import FaultInjection
from harness.stacks.external import ExternalStack
from harness.verdict import Verdict

LIBRARY = Path(__file__).resolve().parents[1] / "scenarios"


def _run_through(fault: str | None, embedded_url: str, tmp_path: Path, scenarios: list[str], rate: float = 1.0):
    stack = FaultedStack(ExternalStack(embedded_url), fault, rate=rate, seed=3)
    out = run_files([LIBRARY / s for s in scenarios], stack, RunOptions(), tmp_path)
    injections = [e for e in out.history.events if isinstance(e, FaultInjection)]
    assert len(injections) == len(stack.proxy.injections), "every injection is in the history"
    ops = {op.op_id for op in out.history.ops}
    assert all(i.op_id in ops for i in injections if i.op_id), "injections cite the driver's operations"
    report = json.loads((tmp_path / "report.json").read_text())
    return out, report, len(injections)


def _failed_checks(report: dict) -> set[str]:
    return {c["name"] for c in report["checks"] if c["verdict"] == "fail"}


def _assert_reproducers(out, tmp_path: Path) -> None:
    folders = sorted((tmp_path / "reproducers").iterdir())
    assert folders, "a FAIL must come with reproducers"
    first = folders[0]
    scenario = (first / "scenario.yaml").read_text()
    assert scenario.startswith("# Reproducer for a") and "seed:" in scenario and "nonce:" in scenario
    assert "curl -sS" in (first / "requests.sh").read_text()


@pytest.mark.parametrize(
    ("fault", "scenarios", "must_fail"),
    [
        ("swap", ["burst.yaml"], {"cache-transparency"}),
        ("bleed", ["shared-system-prompt.yaml"], {"counterfactual-isolation", "cache-transparency"}),
        ("flip", ["strict-prefix.yaml"], {"cache-transparency"}),
        # a stored response served for another prompt reports that prompt's ids
        ("stale", ["shared-document.yaml"], {"prompt-echo"}),
        # the embedded model copies from context: the fishing tail surfaces the injected canary
        ("inject-context", ["shared-document.yaml"], {"cache-transparency", "canary"}),
    ],
)
def test_fault_makes_run_fail_with_reproducer(fault: str, scenarios: list[str], must_fail: set[str],
                                              embedded_url: str, tmp_path: Path) -> None:
    out, report, injected = _run_through(fault, embedded_url, tmp_path, scenarios)
    assert injected > 0, f"the proxy never injected {fault}"
    assert out.verdict is Verdict.FAIL and out.exit_code == 1
    assert must_fail <= _failed_checks(report), _failed_checks(report)
    _assert_reproducers(out, tmp_path)


def test_noise_below_tolerance_does_not_fail(embedded_url: str, tmp_path: Path) -> None:
    out, report, injected = _run_through("noise", embedded_url, tmp_path, ["shared-system-prompt.yaml", "burst.yaml"])
    assert injected > 0
    assert out.verdict is Verdict.PASS, _failed_checks(report)


def test_transparent_proxy_passes(embedded_url: str, tmp_path: Path) -> None:
    out, _report, injected = _run_through(None, embedded_url, tmp_path, ["multi-turn.yaml"])
    assert injected == 0 and out.verdict is Verdict.PASS


@pytest.mark.parametrize(("fault", "blinded"), [("hide-hits", "exercised"), ("flaky", "requests")])
def test_blinding_fault_makes_the_run_unknown_never_pass(fault: str, blinded: str, embedded_url: str,
                                                         tmp_path: Path) -> None:
    """Fail closed: a stack that hides cache reuse, or fails requests for no tenant's reason, leaves
    the run without what it claims: UNKNOWN, with the blinded check saying so (never PASS, never FAIL)."""
    out, report, injected = _run_through(fault, embedded_url, tmp_path, ["shared-system-prompt.yaml"])
    assert injected > 0, f"the proxy never injected {fault}"
    verdicts = {c["name"]: c["verdict"] for c in report["checks"]}
    assert out.verdict is Verdict.UNKNOWN and out.exit_code == 2, verdicts
    assert verdicts[blinded] == "unknown", verdicts
    assert not _failed_checks(report), verdicts
