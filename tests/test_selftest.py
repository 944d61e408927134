"""`harness selftest` is capability-aware and fails closed.

The decision logic (`judge`, `overall_ok`, `offered`) is pure and tested on fabricated rows and
capabilities; the command itself is driven once with the isolation run and the probe replaced by
fakes, to pin the exit code, the table's reason column and selftest.json. Nothing here needs a
server (the runs against real stacks are in test_faults_run.py and test_llamacpp.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.checks.base import Need
from harness.faults import all_faults, get
from harness.frontends.cli import main as cli_main
from harness.frontends.commands import selftest as st
from harness.history.record import FaultInjection, History
from harness.probe.capabilities import Capabilities, Capability
from harness.reporters.html import render_selftest_html
from harness.result import RunMeta, RunResult
from harness.verdict import CheckResult, Verdict, Violation, decide
from tests.factories import ample_evidence

FAULT_NAMES = [f.name for f in all_faults("fault")]
BENIGN_NAMES = [f.name for f in all_faults("benign")]
BLIND_NAMES = [f.name for f in all_faults("blind")]

# What the probe finds on llama-cpp-python 0.3.36 (docs/llamacpp.md) and on the embedded vLLM.
NO_COUNTS = "the target reports no cached-token counts"
LLAMACPP_LACKS = {
    "cached-tokens": NO_COUNTS,
    "salt": "cache_salt separation could not be verified (cannot observe cache hits)",
    "cold-reference": "neither a cache salt nor a cache reset could be verified",
    "prefix-metrics": "the target exposes no prefix-cache counters on /metrics",
    "prompt-ids": "the target echoes no prompt token ids",
}
ALL_PASS = {c: "pass" for c in ("counterfactual-isolation", "cache-transparency", "canary", "exercised",
                                "cache-accounting", "requests", "prompt-echo")} | {"server-counters": "n/a",
                                                                                   "availability": "n/a"}
# A benign run on llama.cpp: the output checks decide, the cache checks cannot.
LLAMACPP_BENIGN = ALL_PASS | {"cache-transparency": "unknown", "exercised": "unknown", "cache-accounting": "unknown",
                              "prompt-echo": "unknown"}


def _caps(**available: bool | None) -> Capabilities:
    """Capabilities with everything the selftest reads verified, except as overridden."""
    caps = Capabilities(target="http://fake")
    for name in ("output_token_ids", "prompt_token_ids", "cached_tokens", "cache_salt_effective", "cache_reset",
                 "prefix_cache_metrics"):
        setattr(caps, name, Capability(True, True, "seen"))
    caps.logprobs = Capability(True, 20, "20 per position")
    for name, value in available.items():
        setattr(caps, name, Capability(value, None, f"{name} evidence"))
    return caps


# --- the vocabulary ------------------------------------------------------------------------------


def test_fault_specs_name_registered_checks_and_library_scenarios() -> None:
    checks = st.check_needs()
    library = {p.name for p in st.LIBRARY.glob("*.yaml")}
    for spec in all_faults():
        assert all(isinstance(n, Need) for n in spec.needs), spec.name
        assert set(spec.detectors) <= set(checks), spec.name
        assert (spec.kind != "benign") == bool(spec.detectors), spec.name
        assert spec.scenarios and set(spec.scenarios) <= library, spec.name
        assert spec.description.startswith(spec.changes), spec.name
    assert {"timing-side-channel", "cached-tokens-side-channel"} <= set(checks)
    assert [f.name for f in all_faults() if f.timing_audit] == ["salt-drop", "salt-merge", "delay"]


def test_offered_reads_the_probe() -> None:
    assert all(why is None for why in st.offered(_caps()).values())
    llama = st.offered(_caps(cached_tokens=False, cache_salt_effective=None, cache_reset=False,
                             prefix_cache_metrics=False))
    assert {n for n, why in llama.items() if why} == {"cached-tokens", "salt", "cold-reference", "prefix-metrics"}
    assert llama["cached-tokens"] == NO_COUNTS
    assert "could not be verified" in (llama["salt"] or "")
    # a working reset is a cold reference even without a salt
    assert st.offered(_caps(cache_salt_effective=False, cache_reset=True))["cold-reference"] is None
    shallow = _caps()
    shallow.logprobs = Capability(True, 1, "1 per position")
    assert "1 top logprob" in (st.offered(shallow)["top-logprobs"] or "")


# --- faults --------------------------------------------------------------------------------------


def test_detected_fault_is_good() -> None:
    j = st.judge("flip", ALL_PASS | {"cache-transparency": "fail"}, "fail", LLAMACPP_LACKS)
    assert j.good and j.applicable and j.verdict == "fail" and "cache-transparency" in j.reason


def test_undetected_fault_without_capability_is_not_applicable() -> None:
    j = st.judge("phantom-hit", LLAMACPP_BENIGN, "unknown", LLAMACPP_LACKS, injections=0)
    assert j.good and not j.applicable and j.verdict == "n/a"
    assert j.reason == (f"{NO_COUNTS}: the check that would see this (cache-accounting) can never PASS here either")
    salt = st.judge("salt-drop", LLAMACPP_BENIGN, "unknown", LLAMACPP_LACKS, injections=22)
    assert salt.verdict == "n/a" and NO_COUNTS in salt.reason and "cache-accounting" in salt.reason


def test_undetected_applicable_fault_is_bad() -> None:
    # on a target with every capability (vLLM), an undetected fault fails the selftest
    j = st.judge("phantom-hit", ALL_PASS, "pass", {}, injections=5)
    assert not j.good and j.applicable and j.verdict == "pass" and "not detected" in j.reason
    # a capability the fault does not need excuses nothing: flip needs ids and 2 top logprobs only
    j = st.judge("flip", LLAMACPP_BENIGN, "unknown", LLAMACPP_LACKS, injections=0)
    assert not j.good and j.applicable and "never injected" in j.reason


def test_detected_means_an_own_detector_cites_an_injected_request() -> None:
    fails = ALL_PASS | {"cache-transparency": "fail"}
    assert st.judge("flip", fails, "fail", {}, injections=4, cited=["cache-transparency"]).good
    # a FAIL whose violations name no injected request shows nothing about the fault
    j = st.judge("flip", fails, "fail", {}, injections=4, cited=[])
    assert not j.good and "cites an injected request" in j.reason
    # nothing injected: a FAIL cannot be the fault's doing
    assert not st.judge("flip", fails, "fail", {}, injections=0, cited=["cache-transparency"]).good
    # a check that is not one of the fault's detectors does not count
    other = ALL_PASS | {"requests": "fail"}
    assert not st.judge("flip", other, "fail", {}, injections=4, cited=["requests"]).good


def test_fault_detected_despite_missing_capability_counts_as_detected() -> None:
    j = st.judge("salt-drop", ALL_PASS | {"cache-accounting": "fail"}, "fail", LLAMACPP_LACKS)
    assert j.good and j.applicable and j.verdict == "fail"


# --- benign controls -----------------------------------------------------------------------------


def test_benign_pass_is_good() -> None:
    assert st.judge("noise", ALL_PASS, "pass", {}) == st.Judgement(True, "pass", "")


def test_benign_unknown_only_where_capability_lacks_is_good() -> None:
    j = st.judge("noise", LLAMACPP_BENIGN, "unknown", LLAMACPP_LACKS)
    assert j.good and j.verdict == "unknown"
    assert "cache-transparency (cold-reference)" in j.reason and "exercised (cached-tokens)" in j.reason


@pytest.mark.parametrize(("checks", "lacking", "why"), [
    # the same UNKNOWNs on a target that offers everything (vLLM): not excused
    (LLAMACPP_BENIGN, {}, "UNKNOWN with every capability"),
    # a check that needs nothing (requests: a request failed) is never excused
    (LLAMACPP_BENIGN | {"requests": "unknown"}, LLAMACPP_LACKS, "requests"),
    # a check the mapping does not know is never excused
    (LLAMACPP_BENIGN | {"some-new-check": "unknown"}, LLAMACPP_LACKS, "some-new-check"),
    # a lacking capability the check does not need excuses nothing
    (ALL_PASS | {"counterfactual-isolation": "unknown"}, LLAMACPP_LACKS, "counterfactual-isolation"),
    (ALL_PASS | {"canary": "fail"}, LLAMACPP_LACKS, "FAILed canary"),
])
def test_benign_fails_closed(checks: dict[str, str], lacking: dict[str, str], why: str) -> None:
    j = st.judge("reorder", checks, "fail" if "fail" in checks.values() else "unknown", lacking)
    assert not j.good and why in j.reason


def test_benign_run_that_stopped_or_skipped_is_bad() -> None:
    assert not st.judge("delay", ALL_PASS, "unknown", {}, error="server died").good
    assert not st.judge("delay", ALL_PASS, "unknown", {}, skipped={"adapter-tenants": "no adapters"}).good
    assert not st.judge("delay", {"server-counters": "n/a"}, "unknown", {}).good  # nothing decided


def test_timing_audit_unknown_is_not_held_against_a_benign_control() -> None:
    timing = {"timing-side-channel": "unknown", "cached-tokens-side-channel": "pass"}
    assert st.judge("delay", ALL_PASS | timing, "pass", {}, audit_checks=timing).good
    failed = ALL_PASS | timing | {"timing-side-channel": "fail"}
    assert not st.judge("delay", failed, "pass", {}, audit_checks=timing).good


def test_overall_ok() -> None:
    good = st.Judgement(True, "fail", "detected")
    na = st.Judgement(True, "n/a", "why", applicable=False)
    bad = st.Judgement(False, "pass", "not detected")
    assert st.overall_ok({"flip": good, "phantom-hit": na, "noise": st.Judgement(True, "pass", "")})
    assert not st.overall_ok({"flip": bad, "phantom-hit": na})
    assert not st.overall_ok({"phantom-hit": na, "salt-drop": na}), "nothing shown: must not pass"
    assert st.overall_ok({"noise": st.Judgement(True, "pass", "")}), "benign only: nothing to show"


# --- the command, with the runs faked ------------------------------------------------------------


def _fake_run(detect: dict[str, str], benign: dict[str, str]):
    """A stand-in for run_fault: faults in `detect` FAIL that check; other runs get `benign`."""
    def run(name: str, target: str, scenarios: Path, out_dir: Path, seed: int,
            files: list[str] | None = None, **_: object) -> tuple[RunResult, int]:
        verdicts = dict(benign)
        blind = name in BLIND_NAMES
        if name in detect:
            verdicts[detect[name]] = "fail"
        if blind:  # a blinding fault hides what its detector needs: that check cannot decide
            verdicts[get(name).detectors[0]] = "unknown"
        results = [CheckResult(c, Verdict(v), exercised=4, evidence=ample_evidence(c),
                               violations=[Violation(c, "s", "m", ["u"], ["op-1"])] * (v == "fail"))
                   for c, v in verdicts.items()]
        injected = [FaultInjection(name, 1.0, "op-1")] * (3 if name in detect or blind else 0)
        result = RunResult(decide(results), [], History(list(injected)), RunMeta(requests=10))
        return result, sum(isinstance(e, FaultInjection) for e in result.history.events)
    return run


def _llamacpp_caps() -> Capabilities:
    return _caps(cached_tokens=False, cache_salt_effective=None, cache_reset=False, prefix_cache_metrics=False,
                 prompt_token_ids=False)


@pytest.mark.parametrize(("caps", "detect", "code"), [
    # llama.cpp: the cache faults are n/a, the output faults detected, benign controls UNKNOWN for cause
    (_llamacpp_caps, {"swap": "canary", "bleed": "counterfactual-isolation", "inject-context": "canary",
                      "stale": "cache-transparency", "flip": "cache-transparency", "hostile-5xx": "availability",
                      "crash-combo": "availability", "poison-request": "availability", "victim-5xx": "availability",
                      "victim-hang": "availability"}, 0),
    # the same, but flip goes undetected: an applicable fault, so exit 1
    (_llamacpp_caps, {"swap": "canary", "bleed": "counterfactual-isolation", "inject-context": "canary",
                      "stale": "cache-transparency"}, 1),
    # a target with every capability but the same UNKNOWNs: nothing excused, exit 1
    (_caps, {f: "cache-transparency" for f in FAULT_NAMES}, 1),
])
def test_selftest_command(caps, detect: dict[str, str], code: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture[str]) -> None:
    async def probe(target: str) -> Capabilities:
        return caps()

    monkeypatch.setattr(st, "_probe", probe)
    monkeypatch.setattr(st, "run_fault", _fake_run(detect, LLAMACPP_BENIGN))
    rc = cli_main(["selftest", "--target", "http://127.0.0.1:9", "--report-dir", str(tmp_path), "--no-timing"])
    assert rc == code
    data = json.loads((tmp_path / "selftest.json").read_text())
    assert data["ok"] is (code == 0)
    assert set(data["faults"]) == set(FAULT_NAMES) | set(BENIGN_NAMES) | set(BLIND_NAMES)
    err = capsys.readouterr().err
    assert "reason" in err
    if caps is _llamacpp_caps:
        assert set(data["not_applicable"]) == {"salt-drop", "salt-merge", "phantom-hit"}
        assert data["capabilities"]["cached-tokens"] == {"offered": False, "why_not": NO_COUNTS,
                                                         "what": Need.CACHED_TOKENS.description}
        phantom = data["faults"]["phantom-hit"]
        assert phantom["verdict"] == "n/a" and "cache-accounting" in phantom["reason"] and phantom["good"]
        assert all(data["faults"][b]["good"] for b in BENIGN_NAMES)
        assert data["faults"]["flip"]["good"] is (code == 0)
        assert "N/A" in err
        page = render_selftest_html(tmp_path)
        assert "n/a" in page and "can never PASS here either" in page
    else:
        assert data["not_applicable"] == {} and not any(data["faults"][b]["good"] for b in BENIGN_NAMES)


def test_a_covering_control_gets_a_row_on_each_server_the_selftest_launched() -> None:
    """On the embedded servers the adversary's faults run without LoRA (their scenario would meet
    the LoRA server's known crash and kill it for every later row); the noise control covers the
    faults of each server on that server, in a second row for the server without adapters."""
    faults = ["swap", "noise", "hostile-5xx"]
    plan = st.row_plan(faults, None, True)
    assert plan == [("swap", "swap", False), ("noise", "noise", False),
                    ("noise", "noise (without adapters)", True), ("hostile-5xx", "hostile-5xx", True)]
    assert "adversarial-tenant.yaml" not in st.scenarios_for("noise", faults, False)
    assert "burst.yaml" in st.scenarios_for("noise", faults, False)
    assert st.scenarios_for("noise", faults, True) == ["adversarial-tenant.yaml"]
    assert st.base_fault("noise+drift (without adapters)") == "noise"
    # against a URL: one server, one row each, the control covering everything
    assert [r for _, r, _ in st.row_plan(faults, "drift", False)] == ["swap+drift", "noise+drift", "hostile-5xx+drift"]
    assert "adversarial-tenant.yaml" in st.scenarios_for("noise", faults)


def test_a_benign_control_unknown_only_for_power_is_good_and_any_other_unknown_is_not() -> None:
    """On a nondeterministic target (drift) counterfactual isolation held but had too little power
    for the leak rate it claims to exclude: UNKNOWN, honest, not a false alarm. Only that excuse
    is taken: another UNKNOWN check, or a power-UNKNOWN beside a real one, stays bad."""
    weak = ALL_PASS | {"counterfactual-isolation": "unknown"}
    j = st.judge("noise", weak, "unknown", {}, power_only=["counterfactual-isolation"])
    assert j.good and "lack of power" in j.reason
    assert not st.judge("noise", weak, "unknown", {}).good
    both = weak | {"exercised": "unknown"}
    assert not st.judge("noise", both, "unknown", {}, power_only=["counterfactual-isolation"]).good
    assert not st.judge("noise", weak | {"canary": "fail"}, "fail", {}, power_only=["counterfactual-isolation"]).good
