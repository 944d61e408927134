"""The fault-injecting proxy: transparent without a fault, each fault changes what it claims, errors pass.

Three groups: (1) transparency against the real embedded server (same tokens, prompt tokens and
cached counts through the proxy as direct); (2) each registered fault, against the real server,
demonstrably changes what its spec says and nothing it should not; (3) bad traffic from
a deliberately broken fake upstream passes through and never hangs.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from aiohttp import web

from harness.client import Endpoint, GenerationRequest, GenerationResult, TargetClient
from harness.faults import all_faults, bleed, flip, stale
from harness.faults.proxy import FaultProxy
from harness.frontends.cli import main as cli_main
from harness.scenario.words import draw_words
from harness.stacks.vllm import free_port
from tests.scripted import serve_app

MODEL = "tiny-llama"
ENDPOINTS: list[Endpoint] = ["completions", "chat"]
STEP_S = 60.0  # bound on any single awaited step against the real server


def _words(n: int) -> list[str]:
    """Freshly drawn pool words; drawn at random, they double as a cache nonce."""
    return draw_words(random.Random(secrets.randbits(64)), n)


def _request(endpoint: Endpoint, text: str, *, user: str | None = None, tenant: str | None = None,
             **kw: Any) -> GenerationRequest:
    headers = {}
    if user is not None:
        headers["X-Harness-User"] = user
        headers["X-Harness-Op"] = f"op-{user}-{secrets.token_hex(3)}"
    if tenant is not None:
        headers["X-Harness-Tenant"] = tenant
    kw.setdefault("max_tokens", 12)
    if endpoint == "chat":
        return GenerationRequest("chat", MODEL, messages=[{"role": "user", "content": text}], headers=headers, **kw)
    return GenerationRequest("completions", MODEL, prompt=text, headers=headers, **kw)


async def _gen(client: TargetClient, req: GenerationRequest) -> GenerationResult:
    r = await asyncio.wait_for(client.generate(req), STEP_S)
    assert r.ok, r.error
    return r


async def _reset(client: TargetClient) -> None:
    assert await asyncio.wait_for(client.reset_prefix_cache(), STEP_S)


@pytest_asyncio.fixture
async def direct(embedded_url: str) -> AsyncIterator[TargetClient]:
    async with TargetClient(embedded_url, timeout_s=STEP_S) as c:
        yield c


# --- (1) transparency ------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_no_fault_is_transparent(embedded_url: str, direct: TargetClient, endpoint: Endpoint,
                                       stream: bool) -> None:
    req = _request(endpoint, " ".join(_words(45)), stream=stream, top_logprobs=5)
    async with FaultProxy(embedded_url) as proxy, TargetClient(proxy.url, timeout_s=STEP_S) as via:
        await _reset(direct)
        cold_direct = await _gen(direct, req)
        await _reset(via)  # POST /reset_prefix_cache goes through the proxy too
        cold_via = await _gen(via, req)
        warm_direct = await _gen(direct, req)
        warm_via = await _gen(via, req)
    assert cold_via.output_token_ids == cold_direct.output_token_ids
    assert cold_via.prompt_token_ids == cold_direct.prompt_token_ids
    assert cold_via.cached_tokens == cold_direct.cached_tokens == 0
    assert warm_via.output_token_ids == warm_direct.output_token_ids == cold_direct.output_token_ids
    assert warm_via.cached_tokens == warm_direct.cached_tokens
    assert warm_via.cached_tokens and warm_via.cached_tokens >= 32
    assert cold_via.top_logprobs == cold_direct.top_logprobs
    assert cold_via.output_text == cold_direct.output_text
    assert proxy.requests_seen == 2 and len(proxy.injections) == 0


async def test_other_paths_are_forwarded(embedded_url: str) -> None:
    async with FaultProxy(embedded_url) as proxy, httpx.AsyncClient(timeout=STEP_S) as http:
        for path in ("/v1/models", "/version", "/openapi.json", "/health", "/metrics"):
            a = await http.get(embedded_url + path)
            b = await http.get(proxy.url + path)
            assert (path, b.status_code) == (path, a.status_code)
            assert b.headers.get("content-type") == a.headers.get("content-type")
            if path == "/metrics":  # counters move between the two reads
                assert "vllm:prefix_cache_queries" in b.text
            elif path == "/v1/models":  # permission ids are minted per call
                assert [m["id"] for m in b.json()["data"]] == [m["id"] for m in a.json()["data"]]
            else:
                assert b.content == a.content, path
        missing = await http.get(proxy.url + "/no/such/path?x=1")
        assert missing.status_code == 404


# --- (2) each fault changes what it says ----------------------------------------------------------


def _margin(top: dict[int, float]) -> float:
    ranked = sorted(top.values(), reverse=True)
    return ranked[0] - ranked[1]


@pytest.mark.parametrize(("endpoint", "stream"), [("completions", False), ("chat", True), ("completions", True)])
async def test_flip_changes_one_confident_token(embedded_url: str, direct: TargetClient, endpoint: Endpoint,
                                               stream: bool) -> None:
    async with (
        FaultProxy(embedded_url, fault="flip", seed=3) as proxy,
        TargetClient(proxy.url, timeout_s=STEP_S) as via,
    ):
        for _ in range(4):  # a response with no confident position is left alone; try another prompt
            req = _request(endpoint, " ".join(_words(40)), stream=stream, max_tokens=16, top_logprobs=5)
            faulted = await _gen(via, req)
            if proxy.injections:
                break
            assert faulted.output_token_ids == (await _gen(direct, req)).output_token_ids
        reference = await _gen(direct, req)
    assert len(proxy.injections) == 1, "no output had a position with a large top-1 margin"
    a, b = reference.output_token_ids, faulted.output_token_ids
    assert len(a) == len(b)
    diffs = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
    assert len(diffs) == 1
    k = diffs[0]
    assert _margin(reference.top_logprobs[k]) > flip.FLIP_MIN_MARGIN  # not a near-tie
    assert b[k] not in reference.top_logprobs[k]
    assert b[k] in faulted.top_logprobs[k] and faulted.token_logprobs[k] < min(reference.top_logprobs[k].values())
    assert faulted.prompt_token_ids == reference.prompt_token_ids
    async with httpx.AsyncClient(timeout=STEP_S) as http:  # the text says the new token too
        detok = (await http.post(embedded_url + "/detokenize", json={"model": MODEL, "tokens": b})).json()
    assert faulted.output_text == detok["prompt"] != reference.output_text


@pytest.mark.parametrize("fault", ["salt-drop", "salt-merge"])
async def test_salt_faults_let_salts_share(embedded_url: str, direct: TargetClient, fault: str) -> None:
    req = _request("completions", " ".join(_words(45)), cache_salt="tenant-a")
    other_salt = _request("completions", req.prompt or "", cache_salt="tenant-b")
    await _reset(direct)
    control = await _gen(direct, req)
    assert (await _gen(direct, other_salt)).cached_tokens == 0  # the server itself keeps salts apart
    await _reset(direct)
    async with FaultProxy(embedded_url, fault=fault) as proxy, TargetClient(proxy.url, timeout_s=STEP_S) as via:
        first = await _gen(via, req)
        second = await _gen(via, other_salt)
    assert first.cached_tokens == 0 and first.output_token_ids == control.output_token_ids
    assert second.cached_tokens and second.cached_tokens >= 32  # a different salt hit the cache
    assert [i.seq for i in proxy.injections] == [1, 2]
    assert "tenant-b" in proxy.injections[1].detail


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_phantom_hit_inflates_cached_tokens(embedded_url: str, direct: TargetClient, stream: bool) -> None:
    req = _request("chat", " ".join(_words(70)), stream=stream)
    await _reset(direct)
    async with FaultProxy(embedded_url, fault="phantom-hit") as proxy, TargetClient(proxy.url, timeout_s=STEP_S) as via:
        faulted = await _gen(via, req)
        again = await _gen(via, req)  # a real hit: left alone
    await _reset(direct)
    real = await _gen(direct, req)
    assert real.cached_tokens == 0
    assert faulted.prompt_tokens is not None
    assert faulted.cached_tokens == faulted.prompt_tokens // 32 * 32 > 0
    assert faulted.output_token_ids == real.output_token_ids
    assert len(proxy.injections) == 1 and again.cached_tokens is not None and again.cached_tokens > 0


@pytest.mark.parametrize(("endpoint", "stream"), [("completions", False), ("chat", True)])
async def test_noise_moves_logprobs_not_tokens(embedded_url: str, direct: TargetClient, endpoint: Endpoint,
                                              stream: bool) -> None:
    req = _request(endpoint, " ".join(_words(30)), stream=stream, top_logprobs=5)
    async with FaultProxy(embedded_url, fault="noise") as proxy, TargetClient(proxy.url, timeout_s=STEP_S) as via:
        noisy = await _gen(via, req)
    clean = await _gen(direct, req)
    assert noisy.output_token_ids == clean.output_token_ids and noisy.prompt_token_ids == clean.prompt_token_ids
    assert noisy.output_text == clean.output_text
    deltas = [abs(x - y) for x, y in zip(noisy.token_logprobs, clean.token_logprobs, strict=False)]
    for n_top, c_top in zip(noisy.top_logprobs, clean.top_logprobs, strict=False):
        assert n_top.keys() == c_top.keys()
        deltas += [abs(n_top[t] - c_top[t]) for t in c_top]
    assert max(deltas) < 1e-6 and sum(d > 0 for d in deltas) > len(deltas) // 2
    assert all(lp <= 0 for lp in noisy.token_logprobs)
    assert len(proxy.injections) == 1


@pytest.mark.parametrize(("fault", "endpoint"), [("bleed", "completions"), ("inject-context", "chat"),
                                                 ("bleed", "chat"), ("inject-context", "completions")])
async def test_context_faults_pull_in_another_tenants_prompt(embedded_url: str, direct: TargetClient, fault: str,
                                                             endpoint: Endpoint) -> None:
    a2_words = _words(40)
    same_tenant = _request(endpoint, " ".join(a2_words), user="a2", tenant="A")
    b_req = _request(endpoint, " ".join(_words(30)), user="b1", tenant="B")
    async with FaultProxy(embedded_url, fault=fault) as proxy, TargetClient(proxy.url, timeout_s=STEP_S) as via:
        await _gen(via, _request(endpoint, " ".join(_words(30)), user="a1", tenant="A"))
        kept = await _gen(via, same_tenant)  # another user of the same tenant is not a source
        faulted = await _gen(via, b_req)  # the latest prompt of another tenant (a2's) is
    assert (await _gen(direct, same_tenant)).prompt_token_ids == kept.prompt_token_ids
    clean = await _gen(direct, b_req)
    assert faulted.prompt_token_ids is not None and clean.prompt_token_ids is not None
    n_added = bleed.BLEED_TAIL_WORDS if fault == "bleed" else len(a2_words)
    added = _words_tokens(embedded_url, " ".join(a2_words[-n_added:]))
    assert len(added) == n_added  # one token per pool word (with its leading space) on the embedded model
    assert len(faulted.prompt_token_ids) > len(clean.prompt_token_ids)
    own = _words_tokens(embedded_url, b_req.prompt or b_req.messages[0]["content"])  # type: ignore[index]
    ids = ",".join(map(str, faulted.prompt_token_ids))
    # the other's words, then this prompt's (the very first word has no leading space: its tokens differ)
    assert ",".join(map(str, added[1:] + own)) in ids
    assert faulted.output_token_ids != clean.output_token_ids
    assert len(proxy.injections) == 1
    inj = proxy.injections[0]
    assert (inj.seq, inj.user, inj.tenant, inj.fault) == (3, "b1", "B", fault) and "a2" in inj.detail
    assert inj.op is not None and inj.op.startswith("op-b1-")


def _words_tokens(url: str, text: str) -> list[int]:
    """Token ids of ' text' on the target (each pool word is one token on the embedded model)."""
    r = httpx.post(url + "/tokenize", json={"model": MODEL, "prompt": f" {text}", "add_special_tokens": False},
                   timeout=STEP_S)
    return list(r.json()["tokens"])


@pytest.mark.parametrize(("endpoint", "streams"), [("completions", (False, False)), ("completions", (True, False)),
                                                   ("chat", (True, True))])
async def test_swap_exchanges_concurrent_users(embedded_url: str, direct: TargetClient, endpoint: Endpoint,
                                               streams: tuple[bool, bool]) -> None:
    reqs = [_request(endpoint, " ".join(_words(30)), user=u, stream=s, max_tokens=10)
            for u, s in zip(("alice", "bob"), streams, strict=True)]
    async with (
        FaultProxy(embedded_url, fault="swap", swap_window_s=STEP_S) as proxy,
        TargetClient(proxy.url, timeout_s=STEP_S) as via,
    ):
        got = await asyncio.gather(*(_gen(via, r) for r in reqs))
    clean = [await _gen(direct, r) for r in reqs]
    assert clean[0].output_token_ids != clean[1].output_token_ids
    assert got[0].output_token_ids == clean[1].output_token_ids
    assert got[1].output_token_ids == clean[0].output_token_ids
    assert got[0].prompt_token_ids == clean[1].prompt_token_ids
    assert got[0].output_text == clean[1].output_text
    assert sorted(i.user for i in proxy.injections) == ["alice", "bob"]


async def test_swap_leaves_one_users_requests_alone(embedded_url: str, direct: TargetClient) -> None:
    reqs = [_request("completions", " ".join(_words(20)), user="carol", max_tokens=6) for _ in range(2)]
    async with (
        FaultProxy(embedded_url, fault="swap", swap_window_s=0.3) as proxy,
        TargetClient(proxy.url, timeout_s=STEP_S) as via,
    ):
        got = await asyncio.gather(*(_gen(via, r) for r in reqs))
    for g, r in zip(got, reqs, strict=True):
        assert g.output_token_ids == (await _gen(direct, r)).output_token_ids
    assert not proxy.injections


async def test_stale_serves_a_different_prompts_answer(embedded_url: str, direct: TargetClient) -> None:
    shared = _words(stale.STALE_MIN_PREFIX_WORDS + 4)
    first = _request("completions", " ".join(shared + _words(8)), user="u1")
    second = _request("completions", " ".join(shared + _words(8)), user="u2", stream=True)
    short = _request("completions", " ".join(shared[:20] + _words(20)), user="u3")
    async with FaultProxy(embedded_url, fault="stale") as proxy, TargetClient(proxy.url, timeout_s=STEP_S) as via:
        got_first = await _gen(via, first)
        got_second = await _gen(via, second)
        got_short = await _gen(via, short)
        again = await _gen(via, first)  # the identical prompt is a correct hit, not a stale one
    clean_second = await _gen(direct, second)
    assert clean_second.output_token_ids != got_first.output_token_ids
    assert got_second.output_token_ids == got_first.output_token_ids
    assert got_short.output_token_ids == (await _gen(direct, short)).output_token_ids
    assert again.output_token_ids == got_first.output_token_ids
    assert [i.user for i in proxy.injections] == ["u2"]


@pytest.mark.parametrize("fault", ["delay", "reorder"])
async def test_benign_timing_faults_keep_tokens(embedded_url: str, direct: TargetClient, fault: str) -> None:
    reqs = [_request(e, " ".join(_words(20)), user=f"u{i}", stream=i % 2 == 0, max_tokens=6)
            for i, e in enumerate(["completions", "chat", "completions", "chat"])]
    async with FaultProxy(embedded_url, fault=fault, seed=7) as proxy, TargetClient(proxy.url, timeout_s=STEP_S) as via:
        got = await asyncio.gather(*(_gen(via, r) for r in reqs))
    for g, r in zip(got, reqs, strict=True):
        clean = await _gen(direct, r)
        assert g.output_token_ids == clean.output_token_ids and g.prompt_token_ids == clean.prompt_token_ids
    assert len(proxy.injections) == 4


async def test_rate_zero_injects_nothing(embedded_url: str, direct: TargetClient) -> None:
    req = _request("completions", " ".join(_words(40)), max_tokens=16)
    async with (
        FaultProxy(embedded_url, fault="flip", rate=0.0) as proxy,
        TargetClient(proxy.url, timeout_s=STEP_S) as via,
    ):
        got = await _gen(via, req)
    assert got.output_token_ids == (await _gen(direct, req)).output_token_ids
    assert proxy.requests_seen == 1 and not proxy.injections


# --- (3) bad traffic from a broken upstream -------------------------------------------------------


class BrokenUpstream:
    """A fake OpenAI server whose answer depends on the prompt: errors, garbage, broken streams, silence."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.closing = asyncio.Event()
        self.url = ""
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.completions)
        app.router.add_get("/metrics", self.metrics)
        self.runner, self.url = await serve_app(app)

    async def stop(self) -> None:
        self.closing.set()
        self.gate.set()
        assert self.runner is not None
        await self.runner.cleanup()

    @staticmethod
    def chunk(text: str, token: int) -> bytes:
        c = {"id": "x", "object": "text_completion", "model": "fake",
             "choices": [{"index": 0, "text": text, "token_ids": [token], "finish_reason": None,
                          "logprobs": {"tokens": [f"token_id:{token}"], "token_logprobs": [-0.1],
                                       "top_logprobs": [{f"token_id:{token}": -0.1, "token_id:9": -5.0}],
                                       "text_offset": [0]}}]}
        return f"data: {json.dumps(c)}\n\n".encode()

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(status=500, text="metrics exploded")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        mode = (body.get("prompt") or body["messages"][0]["content"]).split()[-1]  # bleed prepends words
        if mode == "500":
            return web.json_response({"error": {"message": "boom", "code": 500}}, status=500)
        if mode == "badjson":
            return web.Response(text="{not json", content_type="application/json")
        if mode == "hang":
            await self.closing.wait()
            return web.Response(text="too late")
        if mode == "midbody":
            resp = web.StreamResponse(headers={"Content-Type": "application/json", "Content-Length": "1000"})
            await resp.prepare(request)
            await resp.write(b'{"choices": [')
            request.transport.close()  # type: ignore[union-attr]
            return resp
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        if mode == "badsse":
            await resp.write(b"data: {garbage\n\ndata: [DONE]\n\n")
        elif mode == "midstream":
            await resp.write(self.chunk(" one", 5))
            request.transport.close()  # type: ignore[union-attr]
            return resp
        elif mode == "gated":
            await resp.write(self.chunk(" one", 5))
            await self.gate.wait()
            await resp.write(self.chunk(" two", 6) + b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


@pytest_asyncio.fixture
async def broken() -> AsyncIterator[BrokenUpstream]:
    up = BrokenUpstream()
    await up.start()
    yield up
    await up.stop()


BAD_FAULTS = [None, "flip", "noise", "phantom-hit", "swap", "stale", "reorder", "bleed", "salt-drop", "delay"]


def _body(mode: str, stream: bool) -> dict[str, Any]:
    return {"model": "fake", "prompt": mode, "max_tokens": 4, "stream": stream, "logprobs": 2}


@pytest.mark.parametrize("fault", BAD_FAULTS)
async def test_errors_and_garbage_pass_through(broken: BrokenUpstream, fault: str | None) -> None:
    async with (
        FaultProxy(broken.url, fault=fault, swap_window_s=0.2) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=10.0) as http,
    ):
        async def run() -> None:
            r = await http.post("/v1/completions", json=_body("500", False), headers={"X-Harness-User": "u"})
            assert r.status_code == 500 and r.json() == {"error": {"message": "boom", "code": 500}}
            r = await http.post("/v1/completions", json=_body("badjson", False))
            assert r.status_code == 200 and r.content == b"{not json"
            r = await http.post("/v1/completions", json=_body("badsse", True))
            assert r.status_code == 200 and b"data: {garbage" in r.content and b"[DONE]" in r.content
            r = await http.post("/v1/completions", json=_body("midbody", False))
            assert r.status_code == 502 and "broke off" in r.json()["error"]["message"]
            r = await http.get("/metrics")
            assert r.status_code == 500 and r.text == "metrics exploded"

        await asyncio.wait_for(run(), 20.0)
    assert not proxy.injections or fault in ("reorder", "delay", "bleed")  # these act before the upstream answers


@pytest.mark.parametrize("fault", BAD_FAULTS)
async def test_broken_stream_ends_broken(broken: BrokenUpstream, fault: str | None) -> None:
    async with (
        FaultProxy(broken.url, fault=fault, swap_window_s=0.2) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=10.0) as http,
    ):
        async def run() -> tuple[bytes, BaseException | None]:
            got = b""
            try:
                async with http.stream("POST", "/v1/completions", json=_body("midstream", True)) as r:
                    assert r.status_code == 200
                    async for part in r.aiter_bytes():
                        got += part
            except httpx.HTTPError as exc:
                return got, exc
            return got, None

        got, exc = await asyncio.wait_for(run(), 20.0)
    assert b'" one"' in got and b"[DONE]" not in got
    assert isinstance(exc, httpx.RemoteProtocolError)  # the client can tell the stream broke
    assert proxy.requests_seen == 1


@pytest.mark.parametrize("fault", [None, "flip", "swap"])
async def test_silent_upstream_times_out(broken: BrokenUpstream, fault: str | None) -> None:
    async with (
        FaultProxy(broken.url, fault=fault, timeout_s=0.5) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=10.0) as http,
    ):
        r = await asyncio.wait_for(http.post("/v1/completions", json=_body("hang", False)), 20.0)
        s = await asyncio.wait_for(http.post("/v1/completions", json=_body("hang", True)), 20.0)
    assert r.status_code == s.status_code == 504
    assert "did not answer" in r.json()["error"]["message"]


@pytest.mark.parametrize("fault", [None, "flip", "reorder"])
async def test_upstream_silent_mid_stream_breaks_the_stream(broken: BrokenUpstream, fault: str | None) -> None:
    """The upstream sends one chunk and then nothing (the gate is never opened): the stream breaks."""
    async with (
        FaultProxy(broken.url, fault=fault, timeout_s=0.5) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=10.0) as http,
    ):
        async def run() -> tuple[bytes, BaseException | None]:
            got = b""
            try:
                async with http.stream("POST", "/v1/completions", json=_body("gated", True)) as r:
                    async for part in r.aiter_bytes():
                        got += part
            except httpx.HTTPError as exc:
                return got, exc
            return got, None

        got, exc = await asyncio.wait_for(run(), 20.0)
    assert b'" one"' in got and b'" two"' not in got and b"[DONE]" not in got
    assert isinstance(exc, httpx.RemoteProtocolError)


async def test_unreachable_upstream_is_502() -> None:
    async with (
        FaultProxy(f"http://127.0.0.1:{free_port()}", fault="flip") as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=10.0) as http,
    ):
        r = await asyncio.wait_for(http.post("/v1/completions", json=_body("x", True)), 20.0)
        m = await asyncio.wait_for(http.get("/v1/models"), 20.0)
    assert r.status_code == m.status_code == 502


async def test_plain_stream_is_relayed_unbuffered(broken: BrokenUpstream) -> None:
    """With no fault, the first chunk arrives while the upstream is still holding the rest back."""
    async with FaultProxy(broken.url) as proxy, httpx.AsyncClient(base_url=proxy.url, timeout=10.0) as http:
        async def run() -> list[str]:
            lines: list[str] = []
            async with http.stream("POST", "/v1/completions", json=_body("gated", True)) as r:
                async for line in r.aiter_lines():
                    if line:
                        lines.append(line)
                    if len(lines) == 1:
                        broken.gate.set()  # only now may the upstream finish
            return lines

        lines = await asyncio.wait_for(run(), 20.0)
    assert len(lines) == 3 and lines[-1] == "data: [DONE]"


async def test_buffering_fault_rewrites_fake_stream(broken: BrokenUpstream) -> None:
    """A buffered, edited stream is re-emitted as valid SSE ending in [DONE]."""
    broken.gate.set()
    async with (
        FaultProxy(broken.url, fault="noise") as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=10.0) as http,
    ):
        r = await asyncio.wait_for(http.post("/v1/completions", json=_body("gated", True)), 20.0)
    events = [line[6:] for line in r.text.split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and len(events) == 3
    chunks = [json.loads(e) for e in events[:-1]]
    assert [c["choices"][0]["token_ids"] for c in chunks] == [[5], [6]]
    lp = chunks[0]["choices"][0]["logprobs"]
    assert lp["token_logprobs"][0] != -0.1 and abs(lp["token_logprobs"][0] + 0.1) < 1e-6
    assert lp["top_logprobs"][0]["token_id:5"] == lp["token_logprobs"][0]
    assert len(proxy.injections) == 1


# --- API and CLI -----------------------------------------------------------------------------------


def test_sync_context_manager_and_unknown_fault() -> None:
    with FaultProxy("http://127.0.0.1:9", fault="none") as proxy:
        assert proxy.url.startswith("http://127.0.0.1:") and proxy.fault is None
        assert httpx.get(proxy.url + "/v1/models", timeout=10).status_code == 502
    with pytest.raises(ValueError, match="unknown fault"):
        FaultProxy("http://127.0.0.1:9", fault="nope")
    with pytest.raises(ValueError):
        FaultProxy("http://127.0.0.1:9", fault="flip", rate=2.0)
    with FaultProxy("http://127.0.0.1:9") as first, pytest.raises(OSError):
        FaultProxy("http://127.0.0.1:9", port=first.port).start()


def test_cli_lists_the_catalog(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["proxy", "--list"]) == 0
    out = capsys.readouterr().out
    for spec in all_faults():
        assert spec.name in out
    assert "benign" in out and "fault" in out
    assert {f.name for f in all_faults("benign")} == {"noise", "drift", "delay", "reorder"}
    assert cli_main(["proxy"]) == 2
