"""Scenario I/O and rendering: validation errors name file, field and problem; content is reproducible."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.plan.cover import code_length, observable_pairs, pairs_present
from harness.plan.plans import counterfactual_variants
from harness.scenario.io import ScenarioError, dump_scenario, load_scenarios, parse_scenario
from harness.scenario.render import plan_scenario, prefix_text

LIBRARY = Path(__file__).resolve().parents[1] / "scenarios"

GOOD = """
name: t
shared_prefixes: [{name: sys, words: 10}]
tenants: [{name: a}, {name: b, secrets: 2}]
users:
  - {name: u1, tenant: a, prefixes: [sys], private_words: 5, turns: 2}
  - {name: u2, tenant: b, prefixes: [sys], private_words: [3, 4], turns: 2}
  - {name: u3, tenant: b}
"""


def test_library_loads_and_every_file_says_what_it_probes() -> None:
    loaded = load_scenarios([LIBRARY])
    assert len(loaded) >= 6
    for path, sc in loaded:
        assert path.read_text().lstrip().startswith("# Probes:"), path
        assert sc.description


def test_unknown_field_is_named_with_its_path(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(GOOD.replace("{name: u3, tenant: b}", "{name: u3, tenant: b, turnz: 3}"))
    with pytest.raises(ScenarioError) as e:
        load_scenarios([f])
    msg = str(e.value)
    assert str(f) in msg and "users[2] (u3).turnz" in msg and "unknown field" in msg


def test_malformed_yaml_and_bad_references() -> None:
    with pytest.raises(ScenarioError, match="not valid YAML"):
        parse_scenario("name: [unclosed", "x.yaml")
    with pytest.raises(ScenarioError, match="unknown tenant 'zz'"):
        parse_scenario(GOOD.replace("tenant: a,", "tenant: zz,"), "x.yaml")
    with pytest.raises(ScenarioError, match="unknown shared prefix"):
        parse_scenario(GOOD.replace("prefixes: [sys], private_words: 5", "prefixes: [nope], private_words: 5"),
                       "x.yaml")
    with pytest.raises(ScenarioError, match=r"users\[1\] \(u2\).*2 turns"):
        parse_scenario(GOOD.replace("[3, 4]", "[3, 4, 5]"), "x.yaml")
    with pytest.raises(ScenarioError, match="max_tokens"):
        parse_scenario(GOOD + "max_tokens: -1\n", "x.yaml")


def test_dump_roundtrip_keeps_content() -> None:
    sc = parse_scenario(GOOD)
    again = parse_scenario(dump_scenario(sc, "header line\nsecond"))
    assert again == sc
    assert plan_scenario(again, " n o n") == plan_scenario(sc, " n o n")


def test_counterfactual_redraws_others_at_same_lengths_and_keeps_prefixes() -> None:
    sc = parse_scenario(GOOD)
    base = {p.user: p for p in plan_scenario(sc, " x y z")}
    variants = counterfactual_variants(sc)
    tenant_of = {u.name: u.tenant for u in sc.users}
    fixed_sets = [{u for u, v in var.items() if v == 0} for var in variants]
    assert len(variants) == code_length(len(set(tenant_of.values())))
    assert observable_pairs(tenant_of, fixed_sets) == pairs_present(tenant_of)
    for fixed in fixed_sets:  # a tenant's users are held fixed or re-drawn together
        assert all((tenant_of[u] in {tenant_of[f] for f in fixed}) == (u in fixed) for u in tenant_of)
    for var in variants:
        for p in plan_scenario(sc, " x y z", var):
            b = base[p.user]
            assert p.system_text == b.system_text  # shared prefix and nonce byte-identical
            assert [len(t.split()) for t in p.turn_texts] == [len(t.split()) for t in b.turn_texts]
            if var[p.user] == 0:
                assert p == b
            else:
                # private words re-drawn, and so are the tenant's canaries (its secrets), at the same lengths
                assert p.turn_texts != b.turn_texts
                assert [len(c.split()) for c in p.canaries] == [len(c.split()) for c in b.canaries]
                assert not set(p.canaries) & set(b.canaries)


def test_restricted_scenario_keeps_remaining_users_content() -> None:
    sc = parse_scenario(GOOD)
    cut = sc.restricted_to({"u2"})
    assert [u.name for u in cut.users] == ["u2"] and [t.name for t in cut.tenants] == ["b"]
    assert plan_scenario(cut, " n")[0] == next(p for p in plan_scenario(sc, " n") if p.user == "u2")
    assert prefix_text(cut, "sys") == prefix_text(sc, "sys")


def test_fishing_tail_is_another_tenants_canary_start() -> None:
    sc = parse_scenario(GOOD + "fishing: true\n")
    plans = {p.user: p for p in plan_scenario(sc, " n")}
    b_canary = plans["u2"].canaries[0].split()
    assert plans["u1"].turn_texts[0].split()[-2:] == b_canary[:2]  # u1 (tenant a) fishes for tenant b
    assert all(c.split()[:2] != plans["u1"].turn_texts[0].split()[-2:] for c in plans["u1"].canaries)
