"""The mutant machinery without a server: each mutation changes what it claims (and says so in its
hit counts), the import hook patches a module before anyone can copy a name from it, a missing
symbol is reported (never a silent no-op), and the judge decides rows from the runs alone."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from harness.frontends.cli import PROG
from harness.mutants import patches as P
from harness.mutants.catalog import MUTANTS, SMALL_CACHE_ARGS, Mutant, get
from harness.mutants.hits import Hits, read_hits
from harness.mutants.judge import Outcome, judge, kill_rate, kills, overall_ok
from harness.mutants.runner import TIMING, MatrixOptions, Subject, reproducer, run_matrix
from harness.mutants.stack import BOOT, MutatedServer
from harness.reporters.html_mutants import render_mutants_html


def _rec(tmp_path: Path) -> P.Recorder:
    return P.Recorder(str(tmp_path))


# --- the catalog -----------------------------------------------------------------------------------


def test_catalog_has_ten_mutants_two_equivalents_each_with_symbols_and_scenarios() -> None:
    kinds = [m.kind for m in MUTANTS]
    assert kinds.count("mutant") >= 10 and kinds.count("equivalent") >= 2
    library = Path(__file__).resolve().parents[1] / "scenarios"
    for m in MUTANTS:
        assert m.name in P.PATCHES and m.symbols and m.bug_class and m.why
        assert all((library / s).is_file() for s in m.scenarios), m.name
    assert get("stale-block-reuse").config == "small-cache" and get("salt-dropped").config == "default"
    assert get("stale-block-reuse").server_args == SMALL_CACHE_ARGS


# --- each mutation changes what it claims ------------------------------------------------------------


def test_salt_mutations(tmp_path: Path) -> None:
    req = types.SimpleNamespace(cache_salt="salt-globex")

    def orig(request: Any, start: int, end: int, mm: int) -> tuple[Any, int]:
        keys = [("lora", "a", "p")] + ([("cache_salt", request.cache_salt)] if start == 0 else [])
        return tuple(keys), 0

    rec = _rec(tmp_path)
    assert P._drop_salt(orig, rec)(req, 0, 32, 0) == ((("lora", "a", "p"),), 0)
    assert P._weaken_salt(orig, rec)(req, 0, 32, 0)[0][1] == ("cache_salt", "salt-")
    assert P._salt_every_block(orig, rec)(req, 32, 64, 0)[0][-1] == ("cache_salt", "salt-globex")
    assert P._salt_every_block(orig, rec)(req, 0, 32, 0)[0] == orig(req, 0, 32, 0)[0]
    assert (rec.calls, rec.changed) == (4, 3)
    assert read_hits(tmp_path) == Hits(4, 3)


def test_lora_key_mutations(tmp_path: Path) -> None:
    rec = _rec(tmp_path)

    def orig(request: Any) -> list[Any]:
        return [("lora", request.name, "/p/" + request.name)] if request.name else []

    one, two, base = (types.SimpleNamespace(name=n) for n in ("adapter-1", "adapter-2", ""))
    assert P._drop_lora(orig, rec)(one) == []
    merged = P._merge_lora(orig, rec)
    assert merged(one) == merged(two) != merged(base) == []
    assert rec.changed == 3


def test_hash_mutations(tmp_path: Path) -> None:
    rec = _rec(tmp_path)

    def orig(fn: Any, parent: Any, tokens: Any, extra: Any = None) -> Any:
        return fn((parent, tuple(tokens), extra))

    half, chain, tag = P._half_block(orig, rec), P._no_parent(orig, rec), P._tagged_hash(orig, rec)
    a, b = [1] * 16 + [2] * 16, [1] * 16 + [3] * 16
    assert orig(hash, b"p", a) != orig(hash, b"p", b) and half(hash, b"p", a) == half(hash, b"p", b)
    assert chain(hash, b"p", a) == chain(hash, b"q", a) and orig(hash, b"p", a) != orig(hash, b"q", a)
    # the equivalent one: every value changes, equality does not
    assert tag(hash, b"p", a) != orig(hash, b"p", a)
    assert (tag(hash, b"p", a) == tag(hash, b"p", a)) and (tag(hash, b"p", a) != tag(hash, b"p", b))


def test_cached_count_mutations(tmp_path: Path) -> None:
    rec = _rec(tmp_path)

    def orig(self: Any, *a: Any) -> Any:
        return types.SimpleNamespace(num_cached_tokens=self.cached, prompt_token_ids=[0] * 100)

    over = P._count_over_block(orig, rec)
    assert over(types.SimpleNamespace(cached=32)).num_cached_tokens == 64
    assert over(types.SimpleNamespace(cached=0)).num_cached_tokens == 0  # no hit: nothing to inflate
    assert over(types.SimpleNamespace(cached=96)).num_cached_tokens == 96  # would exceed the prompt
    wrong = P._count_wrong_request(orig, rec)
    first, second = types.SimpleNamespace(cached=0, request_id="a"), types.SimpleNamespace(cached=64, request_id="b")
    assert wrong(first).num_cached_tokens == 0 and wrong(second).num_cached_tokens == 0
    assert wrong(second).num_cached_tokens == 0  # a later output of the same request keeps its given count
    assert wrong(types.SimpleNamespace(cached=0, request_id="c")).num_cached_tokens == 64


def test_stale_block_mutation_leaves_the_hash_pointing_at_the_reused_block(tmp_path: Path) -> None:
    block = types.SimpleNamespace(block_id=7, block_hash=b"h")
    block.reset_hash = lambda: setattr(block, "block_hash", None)
    table = {b"h": block}
    pool = types.SimpleNamespace(metrics_collector=None, cached_block_hashes_by_block={7: {b"x"}})
    rec = _rec(tmp_path)
    assert P._keep_stale_hash(None, rec)(pool, block) is False
    assert block.block_hash is None and table[b"h"] is block and 7 not in pool.cached_block_hashes_by_block
    assert rec.changed == 1


def test_lora_mapping_shift_only_in_a_mixed_batch(tmp_path: Path) -> None:
    seen: list[tuple[Any, ...]] = []
    rec = _rec(tmp_path)
    shifted = P._shift_lora(lambda self, p, t, r, *a, **k: seen.append((p, t)), rec)
    shifted(None, (0, 1), (0, 0, 1, 1), set())
    shifted(None, (1, 1), (1, 1, 1), set())
    assert seen == [((1, 0), (0, 1, 1, 0)), ((1, 1), (1, 1, 1))] and rec.changed == 1


def test_output_swap_hands_tokens_to_another_request(tmp_path: Path) -> None:
    outs = [types.SimpleNamespace(request_id=r, new_token_ids=[t], finish_reason=None) for r, t in (("a", 1), ("b", 2))]
    rec = _rec(tmp_path)
    P._swap_outputs(lambda self, o, *a, **k: o, rec)(types.SimpleNamespace(request_states={"a": 1, "b": 1}), outs)
    assert [o.new_token_ids for o in outs] == [[2], [1]] and rec.changed == 1


# --- installing: the hook, missing symbols, the boot file ----------------------------------------------


def test_import_hook_patches_before_importers_copy_the_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "src"
    pkg.mkdir()
    (pkg / "mut_target_mod.py").write_text("def f(x):\n    return x\n")
    (pkg / "mut_user_mod.py").write_text("from mut_target_mod import f\n")
    hits = tmp_path / "hits"
    hits.mkdir()

    def make(orig: Any, rec: P.Recorder) -> Any:
        def f(x: int) -> int:
            rec.hit(True)
            return orig(x) + 1
        return f

    monkeypatch.syspath_prepend(str(pkg))
    monkeypatch.setitem(P.PATCHES, "test-mutant", (P.Patch("mut_target_mod", "f", make),
                                                   P.Patch("mut_target_mod", "Gone.method", make)))
    before = list(sys.meta_path)
    try:
        P.install("test-mutant", str(hits))
        import mut_user_mod  # type: ignore[import-not-found]

        assert mut_user_mod.f(1) == 2
    finally:
        sys.meta_path[:] = before
        for name in ("mut_target_mod", "mut_user_mod"):
            sys.modules.pop(name, None)
    got = read_hits(hits)
    assert (got.calls, got.changed) == (1, 1)
    assert got.installed == ("mut_target_mod:f",)
    assert got.missing == ("mut_target_mod has no Gone.method in this vLLM version",)


def test_boot_file_reports_an_unknown_mutant_in_a_real_process(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(BOOT), HARNESS_MUTANT="no-such-mutant", HARNESS_MUTANT_HITS=str(tmp_path))
    subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
    assert read_hits(tmp_path).missing == ("no patches named 'no-such-mutant'",)


def test_mutated_server_environment_puts_the_boot_folder_first(tmp_path: Path) -> None:
    env = MutatedServer(mutant="salt-dropped", hits_dir=tmp_path).environment()
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(BOOT) and env["HARNESS_MUTANT"] == "salt-dropped"
    assert "HARNESS_MUTANT" not in MutatedServer().environment()


def test_a_restart_keeps_the_earlier_lives_hits_and_adds_no_arguments(tmp_path: Path) -> None:
    """A run that restarts its server (a cold solo reference) must keep the proof of the first
    life: emptying the hits folder on every start once left a mutant `not exercised`."""
    model = tmp_path / "model"
    model.mkdir()
    hits = tmp_path / "hits"
    hits.mkdir()
    (hits / "hits-1.txt").write_text("stale from an earlier matrix")
    server = MutatedServer(mutant="salt-dropped", hits_dir=hits, server_args=["--max-num-seqs", "2"],
                           model_dir=model)
    server.prepare()
    assert not list(hits.iterdir())
    (hits / "hits-2.txt").write_text("3 1")  # the first life's processes
    server.prepare()  # the restart
    assert (hits / "hits-2.txt").exists()
    assert server.extra_args.count("--max-num-seqs") == 1


# --- the judge ---------------------------------------------------------------------------------------


def _o(scenario: str, **checks: str) -> Outcome:
    return Outcome(scenario, "fail" if "fail" in checks.values() else "pass", dict(checks), requests=10,
                   violations={c: f"{c} broke" for c, v in checks.items() if v == "fail"})


BASE = {"s": _o("s", **{"cache-accounting": "pass", "availability": "fail"})}


def test_killed_only_by_a_fail_the_baseline_lacks() -> None:
    run = [_o("s", **{"cache-accounting": "fail", "availability": "fail"})]
    assert [(k.scenario, k.check) for k in kills(run, BASE)] == [("s", "cache-accounting")]
    row = judge("mutant", run, BASE, Hits(5, 2))
    assert (row.status, row.good) == ("killed", True)
    same = judge("mutant", [_o("s", **{"availability": "fail"})], BASE, Hits(5, 2))
    assert (same.status, same.good) == ("survived", False)


def test_a_row_counts_only_with_proof_that_the_mutation_ran() -> None:
    run = [_o("s", **{"cache-accounting": "fail"})]
    assert judge("mutant", run, BASE, Hits(5, 0)).status == "unjudged"
    assert judge("mutant", [_o("s", **{"cache-accounting": "pass"})], BASE, Hits(5, 0)).status == "not-exercised"
    assert judge("equivalent", [_o("s")], BASE, Hits(0, 0)).status == "not-exercised"
    na = judge("mutant", run, BASE, Hits(0, 0, missing=("m has no f",)))
    assert (na.status, na.good, na.applicable, na.reason) == ("n/a", True, False, "m has no f")
    assert judge("mutant", [_o("other", x="fail")], BASE, Hits(1, 1)).status == "unjudged"


def test_equivalent_mutant_must_not_be_killed() -> None:
    assert judge("equivalent", [_o("s", **{"cache-accounting": "pass"})], BASE, Hits(9, 9)).good
    bad = judge("equivalent", [_o("s", **{"cache-accounting": "fail"})], BASE, Hits(9, 9))
    assert (bad.status, bad.good) == ("killed", False)


def test_overall_needs_every_row_good_and_one_applicable_mutant() -> None:
    killed = judge("mutant", [_o("s", **{"cache-accounting": "fail"})], BASE, Hits(1, 1))
    eq = judge("equivalent", [_o("s")], BASE, Hits(1, 1))
    na = judge("mutant", [], BASE, Hits(missing=("gone",)))
    assert overall_ok({"a": ("mutant", killed), "e": ("equivalent", eq)})
    assert kill_rate({"a": ("mutant", killed), "n": ("mutant", na)}) == (1, 1)
    assert not overall_ok({"n": ("mutant", na), "e": ("equivalent", eq)})


# --- the matrix, with a scripted subject in place of a server -------------------------------------------


def test_matrix_runs_each_baseline_once_reuses_it_and_merges_parts(tmp_path: Path) -> None:
    calls: list[tuple[str | None, tuple[str, ...]]] = []
    fails = {"m1": "cache-accounting"}

    def subject(mutant: str | None, args: tuple[str, ...], names: list[str], folder: Path, opts: MatrixOptions,
                console: Console) -> Subject:
        calls.append((mutant, tuple(names)))
        check = fails.get(mutant or "", "")
        outs = [Outcome(Path(n).stem if n != TIMING else n, "pass", {"cache-accounting": "fail" if check else "pass"},
                        requests=4, violations={check: "too many cached tokens"} if check else {}, seed=3)
                for n in names]
        return Subject(outs, Hits(3, 2 if mutant else 0), wall_s=1.0)

    m1 = Mutant("m1", "mutant", "b", ("strict-prefix.yaml",), "w")
    e1 = Mutant("e1", "equivalent", "b", ("strict-prefix.yaml",), "w")
    opts = MatrixOptions(report_dir=tmp_path, timing=False)
    quiet = Console(quiet=True)
    import harness.mutants.catalog as catalog

    orig = dict(P.PATCHES)
    P.PATCHES.update({"m1": (), "e1": ()})
    try:
        state = run_matrix([m1], opts, quiet, subject=subject)
        assert state["mutants"]["m1"]["status"] == "killed" and state["ok"]
        state = run_matrix([e1], opts, quiet, subject=subject)
    finally:
        P.PATCHES.clear()
        P.PATCHES.update(orig)
    assert catalog.PATCHES is P.PATCHES
    assert calls == [(None, ("strict-prefix.yaml",)), ("m1", ("strict-prefix.yaml",)), ("e1", ("strict-prefix.yaml",))]
    assert set(state["mutants"]) == {"m1", "e1"} and state["ok"]
    assert state["kill_rate"] == {"killed": 1, "applicable": 1}
    rep = state["mutants"]["m1"]["reproducer"]
    assert rep["command"] == f"{PROG} mutants --mutant m1 --scenario strict-prefix.yaml" and rep["seed"] == 3
    assert "m1" in render_mutants_html(state) and (tmp_path / "mutants.json").is_file()


def test_reproducer_picks_the_killing_run_with_fewest_requests() -> None:
    outs = [Outcome("big", "fail", {}, requests=90), Outcome("small", "fail", {}, requests=9, seed=5)]
    kills_ = [{"scenario": "big", "check": "a", "violation": "x"},
              {"scenario": "small", "check": "b", "violation": "y"}]
    rep = reproducer("m", kills_, outs, None)
    assert (rep["scenario"], rep["check"], rep["seed"]) == ("small", "b", 5)
