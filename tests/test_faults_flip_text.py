"""`flip` on a server that names tokens by their text (llama.cpp's shape), against a scripted fake.

llama-cpp-python's server answers completions logprobs in the OpenAI legacy shape keyed by token
text (`tokens`, `top_logprobs` as {text: logprob}, `token_logprobs`, `text_offset` counted in
characters from the start of the prompt), chat logprobs as `content` entries with `bytes: null`,
and no token ids anywhere; it tokenizes with `POST /extras/tokenize {"input": ...}`. The fake here
answers in exactly those shapes, with one confident position (so the flipped position is known) and
tokens of different lengths (so a flip must move later offsets). The same against the real
llama.cpp server is in test_llamacpp.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from aiohttp import web

from harness.client import GenerationRequest, TargetClient
from harness.faults import flip
from harness.faults.proxy import FaultProxy
from harness.scenario.words import word_pool
from tests.scripted import serve_app

TOKENS = [" a", " bb", " ccc", " dddd"]
CONFIDENT = 1  # the only position whose top-1 margin exceeds FLIP_MIN_MARGIN
_POOL = {f" {w}": 1000 + i for i, w in enumerate(word_pool())}
_IDS = {t: 10 + i for i, t in enumerate([*TOKENS, " alt0", " alt1", " alt2", " alt3", " zz"])} | _POOL


def _top(j: int) -> dict[str, float]:
    """Position j's top logprobs: the chosen token first; only CONFIDENT has a margin above 1 nat."""
    second = -5.0 if j == CONFIDENT else -0.6
    top = {TOKENS[j]: -0.5, f" alt{j}": second}
    if j == 3:
        top[" zz"] = -7.0  # a token text seen only here (the no-tokenizer fallback may use it)
    return top


class FakeLlamaCpp:
    """A fake llama-cpp-python server: text-keyed logprobs and /extras/tokenize (or none)."""

    def __init__(self, tokenizer: bool = True) -> None:
        self.tokenizer = tokenizer
        self.tokenized: list[str] = []
        self.url = ""
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat)
        if self.tokenizer:
            app.router.add_post("/extras/tokenize", self.tokenize)
        self.runner, self.url = await serve_app(app)

    async def stop(self) -> None:
        assert self.runner is not None
        await self.runner.cleanup()

    async def tokenize(self, request: web.Request) -> web.Response:
        text = (await request.json())["input"]
        self.tokenized.append(text)
        if text in _IDS:
            return web.json_response({"tokens": [_IDS[text]]})
        return web.json_response({"tokens": [_IDS.get(" " + w, 7) for w in text.split()] or [7, 8]})

    @staticmethod
    async def _stream(request: web.Request, chunks: list[dict[str, Any]]) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for c in chunks:
            await resp.write(f"data: {json.dumps(c)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        start = len(body["prompt"])
        offsets = [start + len("".join(TOKENS[:j])) for j in range(len(TOKENS))]
        lp = {"text_offset": offsets, "token_logprobs": [-0.5] * len(TOKENS), "tokens": list(TOKENS),
              "top_logprobs": [_top(j) for j in range(len(TOKENS))]}
        head = {"id": "cmpl-x", "object": "text_completion", "created": 1, "model": "tiny-llama"}
        if not body.get("stream"):
            return web.json_response({**head, "choices": [{"text": "".join(TOKENS), "index": 0, "logprobs": lp,
                                                           "finish_reason": "length"}],
                                      "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}})
        chunks = [{**head, "choices": [{"text": t, "index": 0, "finish_reason": None, "logprobs": {
            "tokens": [t], "text_offset": [offsets[j]], "token_logprobs": [-0.5], "top_logprobs": [_top(j)]}}]}
            for j, t in enumerate(TOKENS)]
        chunks.append({**head, "choices": [{"text": "", "index": 0, "logprobs": None, "finish_reason": "length"}]})
        return await self._stream(request, chunks)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()

        def entry(j: int) -> dict[str, Any]:
            return {"token": TOKENS[j], "logprob": -0.5, "bytes": None,
                    "top_logprobs": [{"token": t, "logprob": v, "bytes": None} for t, v in _top(j).items()]}

        head = {"id": "chatcmpl-x", "created": 1, "model": "tiny-llama"}
        if not body.get("stream"):
            return web.json_response({**head, "object": "chat.completion", "choices": [{
                "index": 0, "message": {"content": "".join(TOKENS), "role": "assistant"},
                "logprobs": {"content": [entry(j) for j in range(len(TOKENS))], "refusal": None},
                "finish_reason": "length"}]})
        head["object"] = "chat.completion.chunk"
        chunks = [{**head, "choices": [{"index": 0, "delta": {"role": "assistant"}, "logprobs": None,
                                        "finish_reason": None}]}]
        chunks += [{**head, "choices": [{"index": 0, "delta": {"content": t}, "finish_reason": None,
                                         "logprobs": {"content": [entry(j)], "refusal": None}}]}
                   for j, t in enumerate(TOKENS)]
        chunks.append({**head, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}]})
        return await self._stream(request, chunks)


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeLlamaCpp]:
    up = FakeLlamaCpp()
    await up.start()
    yield up
    await up.stop()


@pytest_asyncio.fixture
async def fake_without_tokenizer() -> AsyncIterator[FakeLlamaCpp]:
    up = FakeLlamaCpp(tokenizer=False)
    await up.start()
    yield up
    await up.stop()


def _events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]


def _completion_view(resp: httpx.Response, stream: bool) -> tuple[str, list[str], list[float], list[dict], list[int]]:
    """(text, tokens, token_logprobs, top_logprobs, text_offset) of a completions response, streamed or not."""
    parts = _events(resp.text) if stream else [resp.json()]
    text, toks, lps, tops, offs = "", [], [], [], []
    for p in parts:
        c = p["choices"][0]
        text += c["text"]
        lp = c["logprobs"] or {}
        toks += lp.get("tokens", [])
        lps += lp.get("token_logprobs", [])
        tops += lp.get("top_logprobs", [])
        offs += lp.get("text_offset", [])
    return text, toks, lps, tops, offs


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_flip_edits_text_keyed_completions_consistently(fake: FakeLlamaCpp, stream: bool) -> None:
    body = {"model": "tiny-llama", "prompt": "x y z", "max_tokens": 4, "logprobs": 3, "stream": stream}
    async with FaultProxy(fake.url, fault="flip", seed=5) as proxy, httpx.AsyncClient(timeout=30) as http:
        resp = await http.post(proxy.url + "/v1/completions", json=body)
    assert resp.status_code == 200 and len(proxy.injections) == 1
    text, toks, lps, tops, offs = _completion_view(resp, stream)
    new = toks[CONFIDENT]
    assert toks[:CONFIDENT] + toks[CONFIDENT + 1:] == TOKENS[:CONFIDENT] + TOKENS[CONFIDENT + 1:]
    assert new in _POOL and new not in _top(CONFIDENT), "a pool word outside the position's top logprobs"
    assert new in fake.tokenized, "the replacement was checked to be one token on the target"
    assert text == "".join(toks), "the text spells out the tokens"
    assert offs == [len(body["prompt"]) + len("".join(toks[:j])) for j in range(len(toks))], "later offsets moved"
    assert tops[CONFIDENT][new] == lps[CONFIDENT] < min(_top(CONFIDENT).values())
    assert f"{TOKENS[CONFIDENT]!r} -> {new!r}" in proxy.injections[0].detail


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_flip_edits_text_keyed_chat_consistently(fake: FakeLlamaCpp, stream: bool) -> None:
    body = {"model": "tiny-llama", "messages": [{"role": "user", "content": "x y z"}], "max_tokens": 4,
            "logprobs": True, "top_logprobs": 3, "stream": stream}
    async with FaultProxy(fake.url, fault="flip", seed=5) as proxy, httpx.AsyncClient(timeout=30) as http:
        resp = await http.post(proxy.url + "/v1/chat/completions", json=body)
    assert len(proxy.injections) == 1
    if stream:
        choices = [p["choices"][0] for p in _events(resp.text)]
        text = "".join((c["delta"] or {}).get("content") or "" for c in choices)
        entries = [e for c in choices if c["logprobs"] for e in c["logprobs"]["content"]]
    else:
        choice = resp.json()["choices"][0]
        text, entries = choice["message"]["content"], choice["logprobs"]["content"]
    toks = [e["token"] for e in entries]
    new = toks[CONFIDENT]
    assert new in _POOL and text == "".join(toks)
    e = entries[CONFIDENT]
    assert e["bytes"] is None, "the server's convention (bytes: null) is kept"
    assert {"token": new, "logprob": e["logprob"], "bytes": None} in e["top_logprobs"]


async def test_the_client_recovers_the_flipped_id(fake: FakeLlamaCpp) -> None:
    """What the harness sees: every token maps back to one id, and only the flipped one changed,
    to an id outside the reference's top logprobs (so no near-tie can explain it)."""
    req = GenerationRequest("completions", "tiny-llama", prompt="x y z", max_tokens=4, top_logprobs=3)
    async with (
        FaultProxy(fake.url, fault="flip", seed=5) as proxy,
        TargetClient(proxy.url) as via, TargetClient(fake.url) as direct,
    ):
        faulted, reference = await via.generate(req), await direct.generate(req)
    assert faulted.token_ids_source == reference.token_ids_source == "tokenize"
    pairs = zip(reference.output_token_ids, faulted.output_token_ids, strict=False)
    diffs = [k for k, (a, b) in enumerate(pairs) if a != b]
    assert diffs == [CONFIDENT] and len(proxy.injections) == 1
    assert faulted.output_token_ids[CONFIDENT] not in reference.top_logprobs[CONFIDENT]
    ranked = sorted(reference.top_logprobs[CONFIDENT].values(), reverse=True)
    assert ranked[0] - ranked[1] > flip.FLIP_MIN_MARGIN


async def test_without_a_tokenizer_flip_uses_a_token_the_server_produced(
        fake_without_tokenizer: FakeLlamaCpp) -> None:
    body = {"model": "tiny-llama", "prompt": "x y z", "max_tokens": 4, "logprobs": 3}
    async with (
        FaultProxy(fake_without_tokenizer.url, fault="flip", seed=5) as proxy,
        httpx.AsyncClient(timeout=30) as http,
    ):
        resp = await http.post(proxy.url + "/v1/completions", json=body)
    text, toks, _, _, offs = _completion_view(resp, False)
    seen_elsewhere = {t for j in range(len(TOKENS)) if j != CONFIDENT for t in _top(j)} - set(_top(CONFIDENT))
    assert len(proxy.injections) == 1 and toks[CONFIDENT] in seen_elsewhere
    assert "produced elsewhere" in proxy.injections[0].detail
    assert text == "".join(toks) and offs == [5 + len("".join(toks[:j])) for j in range(len(toks))]


async def test_no_confident_position_no_flip(fake: FakeLlamaCpp, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flip, "FLIP_MIN_MARGIN", 10.0)
    body = {"model": "tiny-llama", "prompt": "x y z", "max_tokens": 4, "logprobs": 3}
    async with FaultProxy(fake.url, fault="flip", seed=5) as proxy, httpx.AsyncClient(timeout=30) as http:
        resp = await http.post(proxy.url + "/v1/completions", json=body)
    assert not proxy.injections and _completion_view(resp, False)[1] == TOKENS
