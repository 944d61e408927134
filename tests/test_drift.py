"""`drift` (benign): near-tied top-two tokens swap under load, consistently in ids, logprobs and
text, never for a request alone. Against a scripted vLLM-shaped server that holds every request
until `LOAD` have arrived, so the load each request sees is known without timing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest_asyncio
from aiohttp import web

from harness.faults.drift import DRIFT_FULL_LOAD, DRIFT_MARGIN, DRIFT_TIE_FLIP, flip_probability
from harness.faults.proxy import FaultProxy
from tests.scripted import serve_app

IDS = [10, 11, 12]
RUNNER_UP = 20
TIE = 1  # the only position whose top-two margin is below DRIFT_MARGIN
LOAD = 8


def _text(ids: list[int]) -> str:
    return "".join(f" w{i}" for i in ids)


def _top(j: int) -> dict[str, float]:
    second = -0.70 if j == TIE else -3.7
    return {f"token_id:{IDS[j]}": -0.69, f"token_id:{RUNNER_UP if j == TIE else 30 + j}": second}


class Held:
    """A scripted server: completions answer once `hold` requests have arrived; /detokenize decodes."""

    def __init__(self, hold: int) -> None:
        self.hold, self.arrived = hold, 0
        self.go = asyncio.Event()
        self.url = ""
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/detokenize", self.detokenize)
        self.runner, self.url = await serve_app(app)

    async def completions(self, request: web.Request) -> web.Response:
        self.arrived += 1
        if self.arrived >= self.hold:
            self.go.set()
        await self.go.wait()
        offsets = [sum(len(f"token_id:{i}") for i in IDS[:j]) for j in range(len(IDS))]
        return web.json_response({"id": "x", "object": "text_completion", "model": "m", "choices": [{
            "index": 0, "text": _text(IDS), "token_ids": list(IDS), "finish_reason": "length",
            "logprobs": {"tokens": [f"token_id:{i}" for i in IDS], "token_logprobs": [-0.69] * len(IDS),
                         "top_logprobs": [_top(j) for j in range(len(IDS))], "text_offset": offsets}}]})

    async def detokenize(self, request: web.Request) -> web.Response:
        return web.json_response({"prompt": _text((await request.json())["tokens"])})


@pytest_asyncio.fixture
async def held() -> AsyncIterator[Held]:
    server = Held(LOAD)
    await server.start()
    yield server
    assert server.runner is not None
    await server.runner.cleanup()


async def _send(url: str, n: int, concurrent: bool) -> list[dict[str, Any]]:
    body = {"model": "m", "prompt": "p", "max_tokens": 3, "logprobs": 2}
    async with httpx.AsyncClient(timeout=30) as c:
        if concurrent:
            rs = await asyncio.gather(*(c.post(url + "/v1/completions", json=body) for _ in range(n)))
        else:
            rs = [await c.post(url + "/v1/completions", json=body) for _ in range(n)]
    return [r.json() for r in rs]


def test_flip_probability_law() -> None:
    assert flip_probability(0.0, 1) == 0.0  # a request alone never flips
    assert flip_probability(DRIFT_MARGIN, DRIFT_FULL_LOAD) == 0.0
    assert flip_probability(0.0, DRIFT_FULL_LOAD) == DRIFT_TIE_FLIP == flip_probability(0.0, 10 * DRIFT_FULL_LOAD)
    assert 0 < flip_probability(DRIFT_MARGIN / 2, 2) < flip_probability(DRIFT_MARGIN / 2, 4) < DRIFT_TIE_FLIP


async def test_drift_swaps_near_ties_under_load_consistently(held: Held) -> None:
    async with FaultProxy(held.url, fault="drift", seed=3) as proxy:
        out = await _send(proxy.url, LOAD, concurrent=True)
    swapped = [o for o in out if o["choices"][0]["token_ids"][TIE] == RUNNER_UP]
    assert len(proxy.injections) == len(swapped) > 0
    assert all(f"{LOAD} request(s) in flight" in inj.detail for inj in proxy.injections)
    for o in swapped:
        c = o["choices"][0]
        top = c["logprobs"]["top_logprobs"][TIE]
        assert c["token_ids"] == [IDS[0], RUNNER_UP, IDS[2]]
        assert c["logprobs"]["tokens"][TIE] == f"token_id:{RUNNER_UP}"
        assert top == {f"token_id:{IDS[TIE]}": -0.70, f"token_id:{RUNNER_UP}": -0.69}  # the two values traded
        assert c["logprobs"]["token_logprobs"][TIE] == -0.69
        assert c["text"] == _text([IDS[0], RUNNER_UP, IDS[2]])
    for o in out:
        if o not in swapped:
            assert o["choices"][0]["token_ids"] == IDS and o["choices"][0]["text"] == _text(IDS)


async def test_drift_never_flips_a_request_alone() -> None:
    server = Held(1)
    await server.start()
    try:
        async with FaultProxy(server.url, fault="drift", seed=3) as proxy:
            out = await _send(proxy.url, 12, concurrent=False)
        assert len(proxy.injections) == 0
        assert all(o["choices"][0]["token_ids"] == IDS for o in out)
    finally:
        assert server.runner is not None
        await server.runner.cleanup()
