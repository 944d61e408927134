"""The adversarial tenant as a fuzzer (harness.adversary): values from the schema, the budget,
pairwise rows, domain confusion, groups, coverage, and the `crash-combo` fault that only
concurrent unusual requests find. Fast lane: the fake server behind the fault proxy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.adversary.cases import DEFAULT_BUDGET, IDENTITY_FIELDS, Target, identical_cases, value_cases
from harness.adversary.confusion import Domains, confusion_cases, identifiers
from harness.adversary.coverage import fields_in_common, missing_schema, parse, summarize
from harness.adversary.pairwise import ROW_FIELDS, pairwise_cases
from harness.adversary.plan import plan_adversary, target_of
from harness.adversary.schema import field_specs, generation_endpoints, undriven_endpoints
from harness.adversary.values import Limits, draw, values_for
from harness.driver.adversary import groups
from harness.engine import RunOptions
from harness.faults.stack import FaultedStack
from harness.frontends.runs import run_files
from harness.history.record import FaultInjection
from harness.scenario.io import load_scenarios
from harness.scenario.render import UserPlan
from harness.verdict import Verdict
from tests.fake_stack import FakeStack

ROOT = Path(__file__).resolve().parents[1]
DOC: dict[str, Any] = json.loads((ROOT / "tests" / "data" / "vllm-0.32.0-openapi.json").read_text())
SCENARIO = ROOT / "scenarios" / "adversarial-tenant.yaml"


def _spec(name: str, endpoint: str = "/v1/completions"):
    return next(s for s in field_specs(DOC, endpoint) if s.name == name)


def test_fields_come_from_both_generation_endpoints_and_the_rest_is_named() -> None:
    eps = generation_endpoints(DOC)
    assert set(eps) == {"completions", "chat"}
    assert {"n", "echo", "cache_salt", "structured_outputs"} <= {s.name for s in eps["completions"]}
    assert {"messages", "top_logprobs", "tools"} <= {s.name for s in eps["chat"]}
    assert undriven_endpoints(DOC) == ["/v1/responses"]


def test_values_span_each_type_valid_and_invalid() -> None:
    by = {v.label: v for v in values_for(_spec("echo"))}
    assert by["true"].value is True and by["false"].value is False and by["true"].valid
    assert not by["string-instead"].valid and by["string-instead"].value == "x"
    side = {v.value for v in values_for(_spec("truncation_side")) if v.klass == "enum"}
    assert side == {"left", "right"}
    tokens = {v.label: v for v in values_for(_spec("max_tokens"), Limits(2048))}
    assert tokens["context-length"].value == 2048 and tokens["context-length"].valid
    assert tokens["past-context-length"].value == 2049 and not tokens["past-context-length"].valid
    assert not tokens["fraction"].valid
    salt = {v.label: v for v in values_for(_spec("cache_salt"))}
    assert "empty" not in {v.label for v in values_for(_spec("cache_salt")) if v.valid}  # minLength 1
    assert len(salt["at-max-length"].value) == 1024 and len(salt["past-max-length"].value) == 1025
    fmt = {v.label: v for v in values_for(_spec("response_format"))}
    assert fmt["json-schema"].value["type"] == "json_schema" and fmt["json-schema"].valid
    n = {v.label for v in values_for(_spec("n")) if v.valid}
    assert "small" in n and "one" not in n  # the default is not unusual


def test_drawn_values_are_deterministic_and_sendable() -> None:
    schema = json.dumps({"type": "array", "items": {"type": "string"}}, sort_keys=True)
    first = draw(schema, 3)
    draw.cache_clear()
    assert draw(schema, 3) == first and len(first) == 3
    for v in first:
        json.dumps(v, ensure_ascii=False).encode("utf-8")


def _domains() -> Domains:
    plans = [UserPlan("a1", "acme", 0, " n1 n2 n3 " + " ".join(f"w{i}" for i in range(66)), ["t"]),
             UserPlan("g1", "globex", 0, " n1 n2 n3 " + " ".join(f"w{i}" for i in range(66)), ["t"])]
    return Domains(plans, {"a1": "salt-acme", "g1": "salt-globex"}, {"a1": "base", "g1": "base"}, ["adapter-1"])


def test_confusion_sends_every_identifier_in_every_identity_field_before_and_after() -> None:
    [(_, scenario)] = load_scenarios([SCENARIO])
    d = _domains()
    fields = {s.name for s in field_specs(DOC, "/v1/completions")}
    cases = confusion_cases(scenario, d, fields, 16)
    idents = {i for _, i, _ in identifiers(scenario, d)}
    assert idents == {"acme", "globex", "a1", "g1", "salt-acme", "salt-globex", "base", "adapter-1"}
    for phase in ("before", "after"):
        mine = [c for c in cases if c.phase == phase]
        for ident in idents:
            carrying = [c for c in mine if all(c.overrides.get(f) == ident for f in IDENTITY_FIELDS)]
            assert carrying, (phase, ident)
            assert all(c.headers.get("X-Request-Id") == ident for c in carrying)
    borrowed = [c for c in cases if c.overrides.get("cache_salt") == "salt-acme"]
    assert borrowed and all(c.victim == "a1" for c in borrowed)
    # the victims' own content, cut at whole blocks (one pool word is one token)
    assert {len(c.prompt.split()) for c in cases if c.prompt} == {16, 64}
    assert any(c.overrides.get("model") == "adapter-1" for c in cases)


def test_plan_keeps_to_the_budget_and_is_deterministic() -> None:
    [(_, scenario)] = load_scenarios([SCENARIO])
    target = target_of(DOC, [{"id": "base", "max_model_len": 2048}])
    one = plan_adversary(scenario, _domains(), target, 16, 300, DOC)
    two = plan_adversary(scenario, _domains(), target, 16, 300, DOC)
    assert [c.name for c in one.cases] == [c.name for c in two.cases]
    assert 280 <= one.requests <= 300
    kinds = {c.kind for c in one.cases}
    assert {"confusion", "identical", "value", "pair"} <= kinds
    assert any(c.endpoint == "chat" for c in one.cases) and any(c.kind == "header" for c in one.cases)
    assert len({c.name for c in one.cases}) == len(one.cases)
    big = plan_adversary(scenario, _domains(), target, 16, None, DOC)
    assert DEFAULT_BUDGET - 20 <= big.requests <= DEFAULT_BUDGET


def test_identical_groups_cover_every_simple_field_in_pairs_first() -> None:
    target = Target(generation_endpoints(DOC), Limits(2048))
    cases = identical_cases(target, 4)
    pairs = [c for c in cases if c.copies == 2]
    assert {"echo", "n", "top_k", "ignore_eos"} <= {next(iter(c.overrides)) for c in pairs}
    assert cases[: len(pairs)] == pairs and max(c.copies for c in cases) == 4
    assert [(c, i) for i in range(2) for c in pairs[:1]] == groups(pairs[:1], 4)[0]


def test_pairwise_rows_cover_what_they_claim() -> None:
    target = Target(generation_endpoints(DOC), Limits(2048))
    rows, covered, total = pairwise_cases(target, 10_000)
    assert covered == total > 1000
    assert all(2 <= len(r.overrides) <= ROW_FIELDS for r in rows)
    few, some, _ = pairwise_cases(target, 5)
    assert len(few) == 10 and 0 < some < total  # five rows per endpoint


def test_value_cases_round_robin_over_fields() -> None:
    cases = value_cases(Target(generation_endpoints(DOC), Limits(2048)))
    first_round = cases[: 55 + 68]
    assert len({next(iter(c.overrides), None) or c.name for c in first_round}) > 60


def test_groups_mix_cases_in_sizes_two_to_k() -> None:
    target = Target(generation_endpoints(DOC), Limits(2048))
    out = groups(value_cases(target)[:40], 4)
    assert sorted({len(g) for g in out}) == [2, 3, 4]
    assert sum(len(g) for g in out) == 40


def _doc_stack(tokens: int | None = None) -> FakeStack:
    """The fake server, serving an OpenAPI document too (as vLLM does), with a 50 ms engine step so
    that requests replayed together overlap as a real batch does (an overlap-dependent failure's
    confirmation replays must reproduce it)."""
    return FakeStack(tokens=tokens, documents={"/openapi.json": DOC}, service_s=0.05)


def _run(stack: Any, tmp_path: Path, budget: int | None = None):
    opts = RunOptions(counterfactual=False, solo=False, calibration_repeats=0, adversary_budget=budget)
    return run_files([SCENARIO], stack, opts, tmp_path)


@pytest.mark.parametrize("seed", [1, 2])
def test_crash_combo_is_found_by_the_default_adversary(seed: int, tmp_path: Path) -> None:
    stack = FaultedStack(_doc_stack(tokens=4), "crash-combo", seed=seed)
    out = _run(stack, tmp_path)
    injections = [e for e in out.history.events if isinstance(e, FaultInjection)]
    assert injections, "the default plan never fired two carriers of the chosen field together"
    field = stack.proxy._fault.spec.name  # type: ignore[union-attr]
    assert all(i.action.startswith(f"{field}=") for i in injections)
    availability = next(c for c in out.decision.checks if c.name == "availability")
    assert availability.verdict is Verdict.FAIL, availability
    cited = {i for v in availability.violations for i in v.op_ids}
    assert cited & {i.op_id for i in injections}
    coverage = json.loads((tmp_path / "report.json").read_text())["metadata"]["adversary"]["adversarial-tenant"]
    assert coverage["plan"]["openapi"] is True and coverage["statuses"]


def test_without_the_fault_the_adversary_finds_nothing_on_the_fake(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    stack = FaultedStack(_doc_stack(tokens=4), None)
    out = _run(stack, tmp_path)
    availability = next(c for c in out.decision.checks if c.name == "availability")
    assert availability.verdict is Verdict.PASS, (availability.violations[:3], availability.notes)
    assert availability.evidence["scenarios_without_openapi"] == 0
    cov = summarize(out.history)["adversarial-tenant"]
    assert cov["requests"] >= DEFAULT_BUDGET - 20
    assert {"confusion", "identical", "value", "pair", "header"} <= set(cov["by_kind"])
    assert cov["table"]["chat"] and cov["plan"]["pairwise_pairs_total"] > 0
    assert cov["plan"]["endpoints_not_driven"] == ["/v1/responses"]
    assert "declares no request fields" in cov["plan"]["endpoints_not_driven_why"]["/v1/responses"]
    assert not missing_schema(out.history)
    # the coverage table in the HTML and a line on the console, with the run's own numbers
    page = (tmp_path / "report.html").read_text()
    section = page[page.index('<h2 id="adversary">'):page.index('<h2 id="metadata">')]
    assert "No OpenAPI document" not in section
    pairs = f"{cov['plan']['pairwise_pairs_covered']} / {cov['plan']['pairwise_pairs_total']}"
    assert pairs in section and f"{cov['victim_overlap_requests']} of {cov['requests']} hostile requests" in section
    for ep, row in cov["endpoints"].items():
        assert f"{row['fields_tried']} / {row['fields_declared']}" in section and ep in section
        assert row["fields_tried"] > 10 and sum(row["values_by_class"].values()) > 0
    assert cov["confusion"]["before"] > 0 and cov["confusion"]["after"] > 0
    assert f"before the victims {cov['confusion']['before']}, after {cov['confusion']['after']}" in section
    assert "/v1/responses" in section and 0 < cov["wall_s"] <= cov["scenario_wall_s"]
    assert f"adversary coverage adversarial-tenant: {cov['requests']} hostile requests" in capsys.readouterr().err


def test_without_a_document_availability_is_unknown_with_the_reason(tmp_path: Path) -> None:
    with FakeStack(tokens=4) as stack:  # serves no /openapi.json
        out = _run(stack, tmp_path, budget=60)
    assert missing_schema(out.history) == ["adversarial-tenant"]
    cov = summarize(out.history)["adversarial-tenant"]
    assert cov["plan"]["openapi"] is False
    availability = next(c for c in out.decision.checks if c.name == "availability")
    assert availability.verdict is Verdict.UNKNOWN and not availability.violations
    assert any("below the minimum evidence" in n and "OpenAPI" in n for n in availability.notes)
    assert any("had no OpenAPI document" in n for n in availability.notes)
    row = next(r for r in out.decision.evidence if r.check == "availability" and "OpenAPI" in r.what)
    assert row.applies and not row.met and row.value == 1
    assert "No OpenAPI document" in (tmp_path / "report.html").read_text()


def test_op_names_parse_back_to_their_cases() -> None:
    from tests.factories import op

    o = op("adversary", "mallory", [], op_id="adversary/s/echo=boolean:true@chat#x2.1")
    assert parse(o) == {"kind": "identical", "endpoint": "chat", "parts": [("echo", "boolean")], "group": 2,
                        "phase": "during"}
    o.op_id = "adversary/s/n=small+top_k=one"
    assert parse(o)["kind"] == "pair" and parse(o)["parts"] == [("n", "small"), ("top_k", "one")]


def test_a_rotation_reaches_other_values_within_the_same_budget() -> None:
    [(_, scenario)] = load_scenarios([SCENARIO])
    target = target_of(DOC, [{"id": "base", "max_model_len": 2048}])
    plain = plan_adversary(scenario, _domains(), target, 16, 200, DOC)
    turned = plan_adversary(scenario, _domains(), target, 16, 200, DOC, rotation=7)
    again = plan_adversary(scenario, _domains(), target, 16, 200, DOC, rotation=7)
    assert [c.name for c in turned.cases] == [c.name for c in again.cases]
    names = {c.name for c in plain.cases if c.kind == "value"}
    assert {c.name for c in turned.cases if c.kind == "value"} - names
    assert abs(turned.requests - plain.requests) <= 4


def test_a_minimal_group_names_the_field_its_members_share() -> None:
    from tests.factories import op

    a = op("adversary", "mallory", [], op_id="adversary/s/echo=boolean:true#x2.0")
    b = op("adversary", "mallory", [], op_id="adversary/s/n=small+echo=boolean:true")
    c = op("main", "a1", [], op_id="main/s/a1/0")
    assert fields_in_common([a, b]) == ["echo"]
    assert fields_in_common([a, c]) == []
