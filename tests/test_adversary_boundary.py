"""The 4xx boundary of numeric fields without a documented maximum, by bisection against the
server's own answers (harness.adversary.boundary): the search finds a fake server's hidden limit,
stops on a 5xx, leaves work-multiplying fields alone, and only a budget above the default pays
for it (the default plan is unchanged)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bench.fake_server import MODEL, FakeServer
from harness.adversary.boundary import PROBES, WORK_FIELDS, Bisection, boundary_cases, boundary_fields
from harness.adversary.cases import DEFAULT_BUDGET, Target
from harness.adversary.coverage import parse, summarize
from harness.adversary.plan import BOUNDARY_SHARE, plan_adversary, target_of
from harness.adversary.schema import FieldSpec, generation_endpoints
from harness.client import TargetClient
from harness.driver.adversary import groups, run_adversary
from harness.driver.sink import MemorySink
from harness.history.record import History, Role
from harness.scenario.io import load_scenarios
from harness.stacks.process import free_port
from tests.fake_stack import _LoopThread
from tests.test_adversary import DOC, SCENARIO, _domains

LIMIT = 5000


def _search(limit: float, integer: bool = True, crash_above: float | None = None) -> Bisection:
    """Run a search against a server that refuses values above `limit` (and answers 500 above
    `crash_above`)."""
    b = Bisection(integer)
    while (v := b.next()) is not None:
        status = 500 if crash_above is not None and v > crash_above else 400 if v > limit else 200
        if not b.answer(v, status):
            break
    return b


def test_the_search_finds_an_integer_limit_exactly_within_its_probes() -> None:
    for limit in (5000, 20, 2**31 - 1, 100_000):
        b = _search(limit)
        assert max(b.accepted) == limit and min(b.refused) == limit + 1, limit
        assert b.sent <= PROBES


def test_a_number_limit_is_bracketed_and_a_huge_limit_reported_as_none_found() -> None:
    b = _search(1.5, integer=False)
    assert max(b.accepted) <= 1.5 < min(b.refused) and min(b.refused) - max(b.accepted) < 1e-3
    never = _search(float("inf"))
    assert not never.refused and max(never.accepted) == 2**63 - 1


def test_a_5xx_ends_the_search() -> None:
    b = _search(10**9, crash_above=10**6)
    assert b.sent == 4 and not b.refused  # 16, 1024, 65536 accepted; 2**24 answered 500: stop


def test_only_fields_without_a_maximum_and_not_multiplying_work_are_searched() -> None:
    specs = [FieldSpec("seed", {"type": "integer"}, True), FieldSpec("n", {"type": "integer"}, True, 1),
             FieldSpec("top_p", {"type": "number", "maximum": 1.0}, True),
             FieldSpec("temperature", {"anyOf": [{"type": "number"}, {"type": "null"}]}, True),
             FieldSpec("echo", {"type": "boolean"}, True)]
    assert [(s.name, integer) for s, integer in boundary_fields(specs)] == [("seed", True), ("temperature", False)]
    names = {c.fields[0][0] for c in boundary_cases(Target(generation_endpoints(DOC)))}
    assert names and not names & WORK_FIELDS


def test_the_default_budget_searches_nothing_and_a_larger_one_pays_for_it() -> None:
    [(_, scenario)] = load_scenarios([SCENARIO])
    target = target_of(DOC, [{"id": "base", "max_model_len": 2048}])
    default = plan_adversary(scenario, _domains(), target, 16, None, DOC)
    assert not [c for c in default.cases if c.kind == "boundary"]
    big = 2 * DEFAULT_BUDGET
    deeper = plan_adversary(scenario, _domains(), target, 16, big, DOC)
    searched = [c for c in deeper.cases if c.kind == "boundary"]
    assert len(searched) == int(DEFAULT_BUDGET * BOUNDARY_SHARE) // PROBES and deeper.requests <= big
    assert all(c.phase == "during" for c in searched)
    assert deeper.summary()["boundary_fields_searched"] == len(searched)
    assert [[m] for m in groups(searched, 4)] and all(len(g) == 1 for g in groups(searched, 4))


class _Limited:
    """The fake server behind a gate that refuses `seed` above LIMIT with a 400, as a validator would."""

    def __init__(self) -> None:
        app = FakeServer(tokens=4, block_size=4).app()

        @web.middleware
        async def gate(request: web.Request, handler: Any) -> web.StreamResponse:
            if request.method == "POST":
                body = json.loads(await request.read())
                if isinstance(body.get("seed"), int) and body["seed"] > LIMIT:
                    return web.json_response({"error": {"message": "seed too large"}}, status=400)
            return await handler(request)

        app.middlewares.append(gate)
        port = free_port()
        self.loop = _LoopThread(app, port)
        self.url = f"http://127.0.0.1:{port}"


@pytest.fixture
def limited() -> Any:
    server = _Limited()
    yield server
    server.loop.close()


def test_the_driver_finds_the_servers_limit_and_the_coverage_reports_it(limited: _Limited, tmp_path: Path) -> None:
    [(_, scenario)] = load_scenarios([SCENARIO])
    target = Target({"completions": [FieldSpec("seed", {"type": "integer"}, True)]})
    cases = boundary_cases(target)
    sink = MemorySink()

    async def go() -> None:
        async with TargetClient(limited.url, keepalive=False) as client:
            await run_adversary(client, scenario, cases, MODEL, sink, Role.ADVERSARY, 4)

    asyncio.run(go())
    history = History(sink.records)
    probes = history.ops
    assert 0 < len(probes) <= PROBES and all(parse(o)["kind"] == "boundary" for o in probes)
    assert len({o.op_id for o in probes}) == len(probes)
    found = summarize(history)["adversarial-tenant"]["boundaries"]["completions"]["seed"]
    assert found == {"probes": len(probes), "accepted_max": LIMIT, "refused_min": LIMIT + 1, "broken": 0}


def test_the_html_coverage_shows_the_boundaries_found() -> None:
    from harness.reporters.html_env import env

    cov = {"requests": 30, "plan": {"openapi": True, "budget": 960},
           "boundaries": {"completions": {"seed": {"probes": 30, "accepted_max": LIMIT, "refused_min": LIMIT + 1,
                                                   "broken": 0},
                                          "priority": {"probes": 9, "accepted_max": 2**63 - 1, "refused_min": None,
                                                       "broken": 0}}}}
    page = env().get_template("_adversary.html.j2").render(meta={"adversary": {"adversarial-tenant": cov}})
    row = page[page.index(">seed<"):]
    assert f">{LIMIT}<" in row and f">{LIMIT + 1}<" in row
    assert f">{2**63 - 1}<" in page and "smallest refused (4xx)" in page
