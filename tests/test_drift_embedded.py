"""The noise calibration on the real embedded server: plain, the A/A repeats stop after one
identical repeat (the exact rule kept); behind `drift` (a nondeterministic server, emulated) a real
fault is still detected by its own detector citing a request it changed, and drift alone never
FAILs. The full `harness selftest --with drift` matrix runs outside CI."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.frontends.commands.selftest import citing_checks, judge, run_fault
from harness.history.record import CalibrationRun, FaultInjection
from harness.verdict import Verdict

LIBRARY = Path(__file__).resolve().parents[1] / "scenarios"


pytestmark = pytest.mark.integration

def test_plain_server_stops_calibrating_after_one_identical_repeat(embedded_url: str, tmp_path: Path) -> None:
    out, _ = run_fault("noise", embedded_url, LIBRARY, tmp_path, seed=0, files=["strict-prefix.yaml"])
    cal = [e for e in out.history.events if isinstance(e, CalibrationRun)]
    assert [c.note for c in cal] == ["identical to the main run"]
    assert out.meta.extra["noise_profile"]["deterministic"] is True
    assert out.verdict is Verdict.PASS, out.reasons


def test_flip_is_detected_through_drift(embedded_url: str, tmp_path: Path) -> None:
    out, injected = run_fault("flip", embedded_url, LIBRARY, tmp_path, seed=0, files=["strict-prefix.yaml"],
                              under="drift")
    checks = {r.name: r.verdict.value for r in out.checks}
    j = judge("flip", checks, out.verdict.value, {}, injections=injected, error=out.error,
              skipped=out.skipped or None, cited=citing_checks(out, "flip"))
    assert injected > 0 and j.good, (j.reason, out.reasons)


def test_drift_alone_never_fails(embedded_url: str, tmp_path: Path) -> None:
    out, injected = run_fault("drift", embedded_url, LIBRARY, tmp_path, seed=0,
                              files=["shared-system-prompt.yaml", "burst.yaml"])
    assert injected == sum(isinstance(e, FaultInjection) for e in out.history.events)
    assert out.verdict is not Verdict.FAIL, out.reasons
    assert "noise_profile" in out.meta.extra
