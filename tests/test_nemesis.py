"""The nemeses (harness/nemesis/) against the fake stack and on hand-made histories: the schedule
by operation index, the same acts in the main run and its counterfactual re-runs, cache accounting
that a cache reset or an adapter reload makes stricter (a server that ignores either FAILs, one that
honours it PASSes), and the `nemesis` check that fails closed when a nemesis never took effect."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from rich.console import Console

from bench.fake_server import FakeServer, PrefixCache
from harness import engine
from harness.checks.base import CheckContext, get
from harness.frontends.cli import main as cli_main
from harness.history.record import History, Incident, NemesisAction
from harness.nemesis import NemesisError, memory_pressure, parse_nemeses
from harness.nemesis.epochs import AdapterEpochs, alive_since, clearings
from harness.nemesis.schedule import adapter_state, build_schedule
from harness.scenario.io import parse_scenario
from harness.stacks.process import free_port
from harness.verdict import Verdict
from tests import fake_stack
from tests.factories import op
from tests.fake_stack import FakeStack

QUIET = Console(stderr=True, quiet=True)
CTX = CheckContext(1e-3)
DOC = list(range(100, 112))  # three blocks of 4


# --- the schedule -----------------------------------------------------------------------------

def test_schedule_is_a_function_of_names_op_count_and_seed() -> None:
    a = build_schedule(("cache-reset", "adapter-churn", "restart"), 30, 7, ("x", "y"))
    assert a == build_schedule(("cache-reset", "adapter-churn", "restart"), 30, 7, ("x", "y"))
    assert a != build_schedule(("cache-reset",), 30, 8)
    resets = [s.index for s in a if s.nemesis == "cache-reset"]
    assert len(resets) == 5 and all(1 <= i < 30 for i in resets) and len(set(resets)) == 5
    assert [s.index for s in a if s.nemesis == "restart"] == [15]
    assert all(s.drain for s in a if s.nemesis in ("adapter-churn", "restart"))
    # another tenant's weights under x's name from a third of the run, its own back from two thirds
    assert adapter_state(a, 9, ("x", "y")) == {"x": "x", "y": "y"}
    assert adapter_state(a, 10, ("x", "y")) == {"x": "y", "y": "y"}
    assert adapter_state(a, 20, ("x", "y")) == {"x": "x", "y": "y"}
    assert build_schedule(("memory-pressure",), 30, 7) == []  # a server configuration, no acts


def test_names_are_checked() -> None:
    assert parse_nemeses("cache-reset, adapter-churn,cache-reset") == ("cache-reset", "adapter-churn")
    with pytest.raises(NemesisError, match="unknown nemesis 'chaos'"):
        parse_nemeses("cache-reset,chaos")
    with pytest.raises(ValueError, match="unknown nemesis"):
        parse_scenario("name: s\ntenants: [{name: t}]\nusers: [{name: u, tenant: t}]\nnemesis: [chaos]\n")


# --- what the records say -----------------------------------------------------------------------

def reset(sent: float, done: float, took: bool = True) -> NemesisAction:
    return NemesisAction("cache-reset", done, "reset", took_effect=took, details={"sent_s": sent})


def test_clearings_only_count_what_took_effect() -> None:
    events = [reset(2.0, 2.1), reset(5.0, 5.2, took=False), reset(7.0, 7.5)]
    cleared = clearings(list(events))
    assert [(c.sent_s, c.done_s) for c in cleared] == [(2.0, 2.1), (7.0, 7.5)]
    assert alive_since(cleared, 1.0) == float("-inf")
    assert alive_since(cleared, 3.0) == 2.0 and alive_since(cleared, 7.2) == 2.0 and alive_since(cleared, 8) == 7.0


def test_a_restart_by_the_nemesis_is_one_clearing_and_other_restarts_count_too() -> None:
    act = NemesisAction("restart", 9.0, "restart", details={"sent_s": 4.0})
    own = Incident(what="restart", at_s=5.0, caused_by_harness=True)  # the stack's record of that act
    other = Incident(what="restart", at_s=12.0, caused_by_harness=True)  # the engine's own restart
    assert [(c.sent_s, c.done_s) for c in clearings([act, own, other])] == [(4.0, 9.0), (12.0, 12.0)]


def test_adapter_epochs_follow_the_loads() -> None:
    events = [NemesisAction("adapter-churn", 0.5, "initial", details={"weights": {"a1": "w1", "a2": "w2"}}),
              NemesisAction("adapter-churn", 2.0, "load", details={"adapter": "a1", "weights": "w2"}),
              NemesisAction("adapter-churn", 3.0, "load", took_effect=False,
                            details={"adapter": "a1", "weights": "w9"}),
              NemesisAction("adapter-churn", 4.0, "load", details={"adapter": "a1", "weights": "w1"})]
    epochs = AdapterEpochs(list(events))
    assert [epochs.weights_at("a1", t) for t in (0.1, 1.0, 2.5, 3.5, 5.0)] == ["w1", "w1", "w2", "w2", "w1"]
    assert epochs.weights_at("m", 1.0) is None


# --- cache accounting under a nemesis, on hand-made histories -------------------------------------

def hit_after(events: list[NemesisAction], source_done: float, model: str = "m") -> History:
    """A source request of DOC completing at `source_done`, and at t=3 a request that hits its blocks."""
    source = op("main", "u1", [7], prompt=[*DOC, 1], invoke_s=0.0, complete_s=source_done, cached=0,
                model=model, ttft_s=0.1)
    hit = op("main", "u2", [8], prompt=[*DOC, 2], invoke_s=3.0, complete_s=3.5, cached=12, model=model, ttft_s=0.1)
    return History([source, *events, hit])


def accounting(h: History) -> Verdict:
    return get("cache-accounting")(h, CTX).verdict


def test_a_hit_after_a_reset_needs_a_source_alive_since_the_reset() -> None:
    assert accounting(hit_after([], 1.0)) is Verdict.PASS
    result = get("cache-accounting")(hit_after([reset(2.0, 2.1)], 1.0), CTX)
    assert result.verdict is Verdict.FAIL and result.violations[0].op_ids == ["main/s/u2/0"]
    assert "cache was last cleared" in result.violations[0].message
    assert result.evidence["cache_clearings"] == 1
    assert accounting(hit_after([reset(2.0, 2.1)], 2.05)) is Verdict.PASS  # still running at the reset
    assert accounting(hit_after([reset(2.0, 2.1, took=False)], 1.0)) is Verdict.PASS  # refused: nothing removed
    assert accounting(hit_after([reset(3.2, 3.3)], 1.0)) is Verdict.PASS  # after the hit was sent


def test_an_adapter_loaded_with_other_weights_is_a_new_domain() -> None:
    initial = NemesisAction("adapter-churn", -1.0, "initial", details={"weights": {"a1": "w1"}})
    other = NemesisAction("adapter-churn", 2.0, "load", details={"adapter": "a1", "weights": "w2"})
    same = NemesisAction("adapter-churn", 2.0, "load", details={"adapter": "a1", "weights": "w1"})
    assert accounting(hit_after([initial], 1.0, model="a1")) is Verdict.PASS
    result = get("cache-accounting")(hit_after([initial, other], 1.0, model="a1"), CTX)
    assert result.verdict is Verdict.FAIL and "held the same weights" in result.violations[0].message
    assert accounting(hit_after([initial, same], 1.0, model="a1")) is Verdict.PASS  # same weights, same domain
    assert accounting(hit_after([initial, other], 1.0, model="m")) is Verdict.PASS  # another name: untouched


# --- the nemesis check --------------------------------------------------------------------------

def nemesis_check(*events: NemesisAction) -> Verdict:
    return get("nemesis")(History([op("main", "u1", [1]), *events]), CTX).verdict


def test_nemesis_check_fails_closed() -> None:
    enabled = NemesisAction("cache-reset", 0.0, "enabled")
    assert nemesis_check() is Verdict.NOT_APPLICABLE
    assert nemesis_check(enabled) is Verdict.UNKNOWN  # enabled, never acted
    assert nemesis_check(enabled, reset(1, 2, took=False)) is Verdict.UNKNOWN  # refused every time
    assert nemesis_check(enabled, reset(1, 2, took=False), reset(3, 4)) is Verdict.PASS
    pressure = NemesisAction("memory-pressure", 5.0, "observed", took_effect=False,
                             details={"preemptions": 0, "evictions": 0})
    assert nemesis_check(enabled, reset(3, 4), pressure) is Verdict.UNKNOWN  # no pressure was seen


def test_pressure_counted_across_a_restart_is_a_lower_bound_never_negative() -> None:
    """Crash triage restarts the server mid-run; the counters start again from zero, so a plain
    difference would report negative evictions (seen on the real server: -1,041)."""
    before = {"preemptions": 3.0, "evictions": 1100.0}
    rec = memory_pressure.observed(before, {"preemptions": 5.0, "evictions": 59.0}, {})
    assert rec.details["evictions"] == 59 and rec.details["preemptions"] == 2
    assert rec.details["counters_reset"] == ["evictions"] and rec.took_effect
    plain = memory_pressure.observed(before, {"preemptions": 3.0, "evictions": 1130.0}, {})
    assert plain.details["evictions"] == 30 and "counters_reset" not in plain.details
    enabled = NemesisAction("memory-pressure", 0.0, "enabled")
    result = get("nemesis")(History([op("main", "u1", [1]), enabled, rec, plain]), CTX)
    assert result.evidence["memory-pressure:evictions"] == 89
    assert any("at least" in n and "restarted the server" in n for n in result.notes)


# --- end to end on the fake stack -----------------------------------------------------------------

SCENARIO = """
name: reset-under-load
endpoint: completions
max_tokens: 4
seed: 3
shared_prefixes: [{name: doc, kind: document, words: 24}]
tenants: [{name: t1}, {name: t2}]
users:
  - {name: u1, tenant: t1, prefixes: [doc], private_words: 3, turns: 3}
  - {name: u2, tenant: t2, prefixes: [doc], private_words: 3, turns: 3}
  - {name: u3, tenant: t1, prefixes: [doc], private_words: 3, turns: 3}
  - {name: u4, tenant: t2, prefixes: [doc], private_words: 3, turns: 3}
schedule: {concurrency: 1, interleaving: lockstep}
"""


class IgnoredReset(PrefixCache):
    """A faulty server's cache: it says it reset, and keeps every block."""

    def reset(self) -> None:
        pass


@pytest.fixture
def honest() -> Iterator[FakeStack]:
    with FakeStack() as stack:
        yield stack


def run_with(stack: FakeStack, names: tuple[str, ...], text: str = SCENARIO, **kw: object) -> engine.RunResult:
    options = engine.RunOptions(nemesis=names, **kw)  # type: ignore[arg-type]
    return engine.run([parse_scenario(text)], stack, options, console=QUIET)


def acts(result: engine.RunResult, nemesis: str, action: str) -> list[NemesisAction]:
    return [e for e in result.history.events
            if isinstance(e, NemesisAction) and e.nemesis == nemesis and e.action == action]


def test_cache_reset_on_an_honest_server_passes_and_acts_alike_in_every_run(honest: FakeStack) -> None:
    result = run_with(honest, ("cache-reset",))
    assert result.verdict is Verdict.PASS, result.reasons
    resets = acts(result, "cache-reset", "reset")
    assert resets and all(r.took_effect for r in resets)
    by_run: dict[str, list[object]] = {}
    for r in resets:
        by_run.setdefault(str(r.details["run"]), []).append(r.details["index"])
    assert "solo" not in by_run and len(by_run) >= 3  # main, its repeats and re-runs; the solo replay is cache-free
    assert len({tuple(v) for v in by_run.values()}) == 1  # the same indices in every run
    nemesis = result.check("nemesis")
    assert nemesis is not None and nemesis.verdict is Verdict.PASS
    assert nemesis.evidence["cache-reset:took_effect"] == len(resets)
    accounting = result.check("cache-accounting")
    assert accounting is not None and accounting.evidence["cache_clearings"] == len(resets)


def test_cache_reset_on_a_server_that_ignores_it_fails_accounting(honest: FakeStack) -> None:
    assert honest.server is not None
    honest.server.cache = IgnoredReset(honest.block_size)
    result = run_with(honest, ("cache-reset",))
    assert result.verdict is Verdict.FAIL, result.reasons
    accounting = result.check("cache-accounting")
    assert accounting is not None and accounting.verdict is Verdict.FAIL
    first_reset = min(r.at_s for r in acts(result, "cache-reset", "reset"))
    flagged = {o.op_id: o for o in result.history.ops}
    assert all(flagged[i].invoke_s > first_reset for v in accounting.violations for i in v.op_ids)


def test_a_refused_reset_is_unknown_not_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    async def refuse(self: FakeServer, request: web.Request) -> web.Response:
        return web.json_response({"success": False})  # what vLLM says while blocks are held

    monkeypatch.setattr(FakeServer, "reset", refuse)
    with FakeStack() as stack:
        result = run_with(stack, ("cache-reset",))
    nemesis = result.check("nemesis")
    assert nemesis is not None and nemesis.verdict is Verdict.UNKNOWN
    assert result.verdict is Verdict.UNKNOWN
    accounting = result.check("cache-accounting")
    assert accounting is not None and accounting.verdict is Verdict.PASS  # refused resets remove nothing


class ChurnServer(FakeServer):
    """The fake server with vLLM's runtime adapter endpoints. `keyed` (a correct server) makes an
    adapter's cache domain its name and the folder its weights came from; otherwise the name alone
    (a server that serves blocks computed with the old weights)."""

    keyed = True

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.paths: dict[str, str] = {}
        server = self

        class Cache(PrefixCache):
            def _hashes(self, domain: tuple[str, str | None], ids: list[int], start: int = 0) -> list[int]:
                name, salt = domain
                if server.keyed:
                    name = f"{name}:{server.paths.get(name, '')}"
                return super()._hashes((name, salt), ids, start)

        self.cache = Cache(self.cache.block)

    def app(self) -> web.Application:
        app = super().app()
        app.router.add_post("/v1/load_lora_adapter", self.load)
        app.router.add_post("/v1/unload_lora_adapter", self.unload)
        return app

    async def load(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.paths[body["lora_name"]] = body["lora_path"]
        return web.Response(text="ok")

    async def unload(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")


CHURN = """
name: churn
endpoint: completions
max_tokens: 4
seed: 5
shared_prefixes: [{name: doc, kind: document, words: 24}]
tenants: [{name: t1, adapter: a1}, {name: t2, adapter: a2}]
users:
  - {name: u1, tenant: t1, prefixes: [doc], private_words: 3, turns: 3}
  - {name: u2, tenant: t1, prefixes: [doc], private_words: 3, turns: 3}
  - {name: u3, tenant: t2, prefixes: [doc], private_words: 3, turns: 3}
  - {name: u4, tenant: t2, prefixes: [doc], private_words: 3, turns: 3}
schedule: {concurrency: 1, interleaving: lockstep}
"""


@pytest.fixture
def adapters(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name in ("a1", "a2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "adapter_model.safetensors").write_bytes(name.encode() * 8)
        out[name] = tmp_path / name
    return out


@pytest.mark.parametrize("keyed", [True, False])
def test_adapter_churn_new_weights_are_a_new_domain(monkeypatch: pytest.MonkeyPatch, adapters: dict[str, Path],
                                                    keyed: bool) -> None:
    monkeypatch.setattr(fake_stack, "FakeServer", ChurnServer)
    monkeypatch.setattr(ChurnServer, "keyed", keyed)
    with FakeStack(models=("m", "a1", "a2")) as stack:
        result = run_with(stack, ("adapter-churn",), CHURN, adapter_sources=adapters)
    loads = acts(result, "adapter-churn", "load")
    assert loads and all(a.took_effect for a in loads)
    main = [a for a in loads if a.details["run"] == "main"]
    assert [(a.details["index"], a.details["adapter"], a.details["weights_of"]) for a in main] == [
        (4, "a1", "a2"), (4, "a2", "a2"), (8, "a1", "a1")]  # between turns: lockstep of 4 users
    nemesis = result.check("nemesis")
    assert nemesis is not None and nemesis.verdict is Verdict.PASS
    assert nemesis.evidence["adapter-churn:weights:a1"] == 2
    accounting = result.check("cache-accounting")
    assert accounting is not None
    if keyed:
        assert result.verdict is Verdict.PASS, result.reasons
    else:  # the first a1 request after the swap hit blocks computed with a1's old weights
        assert accounting.verdict is Verdict.FAIL
        swapped = [o for o in result.history.ops if o.model == "a1" and o.turn == 1 and o.run == "main"]
        assert any(o.op_id in v.op_ids for v in accounting.violations for o in swapped)


def test_restart_nemesis_restarts_and_clears(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    monkeypatch.setattr(fake_stack, "free_port", lambda: port)  # restarted on the same port, as an owned server is
    with FakeStack() as stack:
        result = run_with(stack, ("restart",))
    restarts = acts(result, "restart", "restart")
    assert restarts and all(r.took_effect for r in restarts) and stack.restarts == len(restarts)
    assert result.verdict is Verdict.PASS, result.reasons
    accounting = result.check("cache-accounting")
    # each restart once: the nemesis's act and the stack's incident for it are one clearing
    assert accounting is not None and accounting.evidence["cache_clearings"] == len(restarts)


def test_adapter_churn_without_adapter_folders_is_unknown(honest: FakeStack) -> None:
    result = run_with(honest, ("adapter-churn",))
    nemesis = result.check("nemesis")
    assert nemesis is not None and nemesis.verdict is Verdict.UNKNOWN
    assert result.verdict is Verdict.UNKNOWN


def test_cli_refuses_unknown_and_misplaced_nemeses(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["run", "--nemesis", "chaos", "--target", "http://127.0.0.1:9"]) == 2
    assert "unknown nemesis 'chaos'" in capsys.readouterr().err
    assert cli_main(["run", "--nemesis", "memory-pressure", "--target", "http://127.0.0.1:9"]) == 2
    assert "configures the embedded vLLM server" in capsys.readouterr().err


@pytest.mark.parametrize("keyed", [True, False])
def test_the_library_adapter_churn_scenario_checks_every_hit(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                              keyed: bool) -> None:
    """scenarios/nemesis/adapter-churn.yaml sends each adapter's second user after its first
    (`leaders_first`): every hit has a same-domain source that had reached the cache, so none is
    left unchecked; a server that keeps the old weights' blocks under a reloaded name FAILs."""
    library = Path(__file__).resolve().parents[1] / "scenarios" / "nemesis" / "adapter-churn.yaml"
    sources = {}
    for name in ("adapter-1", "adapter-2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "adapter_model.safetensors").write_bytes(name.encode() * 8)
        sources[name] = tmp_path / name
    monkeypatch.setattr(fake_stack, "FakeServer", ChurnServer)
    monkeypatch.setattr(ChurnServer, "keyed", keyed)
    with FakeStack(models=(fake_stack.MODEL, *sources), block_size=16) as stack:
        result = run_with(stack, ("adapter-churn",), library.read_text(), adapter_sources=sources)
    accounting = result.check("cache-accounting")
    assert accounting is not None
    if keyed:
        assert result.verdict is Verdict.PASS, result.reasons
        assert accounting.evidence["hits_unchecked"] == 0 and accounting.evidence["hits_checked"] > 0
        assert accounting.evidence["adapter_weight_changes"] == 1
    else:
        assert accounting.verdict is Verdict.FAIL
