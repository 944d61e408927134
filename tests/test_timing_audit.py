"""The timing side-channel audit: its verdict rules (pure), then the real thing against the embedded
server in both directions: salted PASSes with the control detected; with the salt dropped by the
fault proxy it FAILs. The statistics decide; nothing here asserts a time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.audit.stats import ARMS, CONTROL, MISS, MISS2, PROBE, Decision, SequentialPlan, look_at
from harness.audit.timing import (
    ATTACKER,
    CACHED_CHECK,
    TIMING_CHECK,
    VICTIM,
    AuditConfig,
    AuditResult,
    Round,
    Sample,
    judge_cached,
    judge_timing,
)
from harness.faults.proxy import FaultProxy
from harness.frontends.cli import main
from harness.verdict import Verdict

PLAN = SequentialPlan(alpha=1e-6, min_probes=5, max_probes=30)
N = 20
HIT = [0.05 + 0.001 * i for i in range(N)]
COLD = [0.30 + 0.001 * i for i in range(N)]
COLD2 = [0.3005 + 0.001 * i for i in range(N)]
LIKE_COLD = [v + 0.0002 for v in COLD]


def _look(probe: list[float], control: list[float], miss2: list[float] = COLD2):
    return look_at({PROBE: probe, CONTROL: control, MISS: COLD, MISS2: miss2}, PLAN)


# --- verdict rules ----------------------------------------------------------------------------------


def test_salted_probe_like_a_miss_with_the_control_detected_passes() -> None:
    res = judge_timing(_look(LIKE_COLD, HIT), "salted", PLAN)
    assert res.verdict is Verdict.PASS and res.exercised == N


def test_salted_probe_detected_fails_with_the_numbers() -> None:
    res = judge_timing(_look(HIT, HIT), "salted", PLAN)
    assert res.verdict is Verdict.FAIL
    (v,) = res.violations
    assert v.details["probes_per_arm"] == N and v.details["effect"]["share_faster_than_fastest"] == 1.0
    assert "median" in v.message and "Holm p" in v.message


def test_salted_without_power_or_with_drift_is_unknown() -> None:
    assert judge_timing(_look(LIKE_COLD, LIKE_COLD), "salted", PLAN).verdict is Verdict.UNKNOWN
    drift = _look(HIT, HIT, miss2=[v + 1.0 for v in COLD])
    assert drift.decision is Decision.AA_REJECTED
    assert judge_timing(drift, "salted", PLAN).verdict is Verdict.UNKNOWN  # even with the probe "detected"
    assert judge_timing(None, "salted", PLAN).verdict is Verdict.UNKNOWN


def test_shared_prefix_detection_is_a_finding_not_a_failure() -> None:
    res = judge_timing(_look(HIT, HIT), "shared-prefix", PLAN)
    assert res.verdict is Verdict.PASS and any(n.startswith("finding:") for n in res.notes)
    assert judge_timing(_look(LIKE_COLD, LIKE_COLD), "shared-prefix", PLAN).verdict is Verdict.UNKNOWN


def _result(policy: str, probe_cached: list[int | None], control_cached: list[int | None]) -> AuditResult:
    result = AuditResult(AuditConfig(target="http://unused", policy=policy), "m", 0, {VICTIM: None, ATTACKER: None})
    for i, (pc, cc) in enumerate(zip(probe_cached, control_cached, strict=True)):
        cached = {PROBE: pc, CONTROL: cc, MISS: 0 if pc is not None else None, MISS2: 0 if pc is not None else None}
        probes = [Sample(a, ATTACKER, i, k, True, 0.1, 0.1, cached[a], 100, f"n{i}{a}") for k, a in enumerate(ARMS)]
        setup = [Sample(s, s, i, k, True, 0.1, 0.1, 0, 100, f"s{i}{s}") for k, s in enumerate((VICTIM, "prime"))]
        result.rounds.append(Round(i, setup, probes))
    return result


def test_one_cross_salt_cached_token_count_fails_under_salted_only() -> None:
    leaky = _result("salted", [0, 0, 96, 0], [96, 96, 96, 96])
    res = judge_cached(leaky, "salted")
    assert res.verdict is Verdict.FAIL and res.violations[0].details["rounds"] == [2]
    assert judge_cached(leaky, "shared-prefix").verdict is Verdict.PASS


def test_cached_token_field_needs_its_positive_control() -> None:
    assert judge_cached(_result("salted", [0] * 4, [96] * 4), "salted").verdict is Verdict.PASS
    assert judge_cached(_result("salted", [0] * 4, [0] * 4), "salted").verdict is Verdict.UNKNOWN
    hidden = judge_cached(_result("salted", [None] * 4, [None] * 4), "salted")
    assert hidden.verdict is Verdict.PASS and "reports no cached-token counts" in hidden.notes[0]


# --- against the embedded server --------------------------------------------------------------------


def _audit(target: str, report_dir: Path, *extra: str) -> tuple[int, dict]:
    rc = main(["audit-timing", "--target", target, "--report-dir", str(report_dir), *extra])
    report = json.loads((report_dir / "audit.json").read_text())
    png = (report_dir / "audit-timing.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    return rc, report


def _checks(report: dict) -> dict[str, str]:
    return {c["name"]: c["verdict"] for c in report["checks"]}


@pytest.mark.integration
def test_salted_tenants_pass_with_the_control_detected(embedded_url: str, tmp_path: Path) -> None:
    rc, report = _audit(embedded_url, tmp_path)
    final = report["final"]
    assert rc == 0 and report["verdict"] == "pass", json.dumps(report["checks"], indent=1)
    assert final["control_detected"] and not final["probe_detected"] and not final["aa_rejected"]
    assert final["decision"] == Decision.CLEAR.value
    assert report["probes_per_arm"] <= 30
    assert all(len(v) == report["probes_per_arm"] for v in report["samples_ttft_s"].values())
    assert all((c or 0) == 0 for c in report["cached_tokens"][PROBE])
    assert _checks(report) == {TIMING_CHECK: "pass", CACHED_CHECK: "pass"}


@pytest.mark.integration
def test_dropped_salt_fails_by_timing_and_by_cached_tokens(embedded_url: str, tmp_path: Path) -> None:
    with FaultProxy(embedded_url, fault="salt-drop", rate=1.0) as proxy:
        rc, report = _audit(proxy.url, tmp_path)
        assert len(proxy.injections) > 0
    assert rc == 1 and report["verdict"] == "fail"
    assert _checks(report) == {TIMING_CHECK: "fail", CACHED_CHECK: "fail"}
    assert report["final"]["probe_detected"] and report["final"]["decision"] == Decision.PROBE_DETECTED.value
    assert report["probes_per_arm"] <= 30
