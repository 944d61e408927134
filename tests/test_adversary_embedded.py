"""The adversarial tenant against the embedded vLLM: `crash-combo` (a batch crash that needs two
unusual requests together, on a field the harness is not told) is found by the default plan and
triaged to the pair, with the field named by the minimal group's common unusual value."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.adversary.coverage import fields_in_common
from harness.engine import RunOptions
from harness.faults.stack import FaultedStack
from harness.frontends.runs import run_files
from harness.history.record import FaultInjection, TriageReplay
from harness.stacks.external import ExternalStack
from harness.verdict import Verdict

SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "adversarial-tenant.yaml"


pytestmark = [pytest.mark.integration, pytest.mark.matrix]  # `make test-matrix`

def test_crash_combo_is_found_and_triaged_to_the_pair(embedded_nolora_url: str, tmp_path: Path) -> None:
    stack = FaultedStack(ExternalStack(embedded_nolora_url), "crash-combo", seed=1)
    opts = RunOptions(counterfactual=False, solo=False, calibration_repeats=0, replay_incidents=True)
    out = run_files([SCENARIO], stack, opts, tmp_path)
    field = stack.proxy._fault.spec.name  # type: ignore[union-attr]
    injections = [e for e in out.history.events if isinstance(e, FaultInjection)]
    assert injections and all(i.action.startswith(f"{field}=") for i in injections)
    availability = next(c for c in out.decision.checks if c.name == "availability")
    assert availability.verdict is Verdict.FAIL
    replays = [e for e in out.history.events if isinstance(e, TriageReplay)]
    smallest = min((r for r in replays if r.reproduced and r.op_ids), key=lambda r: len(r.op_ids))
    assert len(smallest.op_ids) == 2
    ops = {o.op_id: o for o in out.history.ops}
    bodies = [ops[i].request for i in smallest.op_ids]
    assert all(field in b for b in bodies), (field, smallest.op_ids)
    assert field in fields_in_common([ops[i] for i in smallest.op_ids])
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["metadata"]["adversary"]["adversarial-tenant"]["plan"]["openapi"] is True
