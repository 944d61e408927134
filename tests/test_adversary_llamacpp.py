"""The adversarial tenant against llama.cpp (the second stack): `crash-combo` is found and triaged
to the pair there too. llama.cpp's server also dies on its own on one hostile `grammar` value
(docs/llamacpp.md); the harness owns this server, so it restarts it after each death and the
pair is told apart from that crash by the field the pair has in common."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.adversary.coverage import fields_in_common
from harness.engine import RunOptions
from harness.faults.stack import FaultedStack
from harness.frontends.runs import run_files
from harness.history.record import FaultInjection
from harness.stacks.llamacpp import LlamaCppServer
from harness.verdict import Verdict
from tests.test_llamacpp import needs_llama_cpp

SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "adversarial-tenant.yaml"

pytestmark = [pytest.mark.integration, pytest.mark.matrix, needs_llama_cpp]  # `make test-matrix`


def test_crash_combo_is_found_and_triaged_to_the_pair_on_llamacpp(tmp_path: Path) -> None:
    stack = FaultedStack(LlamaCppServer(interrupt_requests=False, log_path=tmp_path / "llama.log"),
                         "crash-combo", seed=1)
    opts = RunOptions(counterfactual=False, solo=False, calibration_repeats=0, replay_incidents=True)
    out = run_files([SCENARIO], stack, opts, tmp_path / "run")
    field = stack.proxy._fault.spec.name  # type: ignore[union-attr]
    injections = [e for e in out.history.events if isinstance(e, FaultInjection)]
    assert injections and all(i.action.startswith(f"{field}=") for i in injections)
    availability = next(c for c in out.decision.checks if c.name == "availability")
    assert availability.verdict is Verdict.FAIL
    ops = {o.op_id: o for o in out.history.ops}
    # the attributed groups of the fault (the server's own crashes, if any, are other incidents)
    ours = [v.op_ids for v in availability.violations if v.op_ids and all(field in ops[i].request for i in v.op_ids)]
    assert ours, [v.message for v in availability.violations]
    smallest = min(ours, key=len)
    assert len(smallest) == 2
    assert field in fields_in_common([ops[i] for i in smallest])
