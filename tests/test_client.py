"""The client's parsing of real responses: both endpoints, streamed and not, and its failure results.

Every check compares token ids, so the client must return the same ids whichever way it asked,
key top logprobs by token id, and turn every failure into a result instead of an exception.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import AsyncIterator

import pytest

from harness.client import Endpoint, GenerationRequest, TargetClient
from harness.scenario.words import draw_words
from harness.stacks.vllm import free_port

MODEL = "tiny-llama"
ENDPOINTS: list[Endpoint] = ["completions", "chat"]


def _text(n_words: int) -> str:
    """Freshly drawn random words (a nonce in themselves), so earlier cache entries cannot match."""
    return " ".join(draw_words(random.Random(secrets.randbits(64)), n_words))


def _request(endpoint: Endpoint, text: str, **kw: object) -> GenerationRequest:
    if endpoint == "chat":
        return GenerationRequest("chat", MODEL, messages=[{"role": "user", "content": text}], **kw)  # type: ignore[arg-type]
    return GenerationRequest("completions", MODEL, prompt=text, **kw)  # type: ignore[arg-type]


@pytest.fixture
async def client(embedded_url: str) -> AsyncIterator[TargetClient]:
    async with TargetClient(embedded_url, timeout_s=60) as c:
        yield c


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_streamed_and_plain_give_same_tokens(client: TargetClient, endpoint: Endpoint) -> None:
    text = _text(40)
    plain = await client.generate(_request(endpoint, text, max_tokens=8))
    streamed = await client.generate(_request(endpoint, text, max_tokens=8, stream=True))
    for r in (plain, streamed):
        assert r.ok and r.status == 200, r.error
        assert len(r.output_token_ids) == 8 and r.finish_reason == "length"
        assert r.prompt_token_ids and len(r.prompt_token_ids) == r.prompt_tokens
        assert len(r.top_logprobs) == len(r.output_token_ids) == len(r.token_logprobs)
        assert r.output_text
    assert streamed.output_token_ids == plain.output_token_ids
    assert streamed.prompt_token_ids == plain.prompt_token_ids
    assert streamed.output_text == plain.output_text
    assert streamed.ttft_s is not None and 0 < streamed.ttft_s <= streamed.latency_s  # type: ignore[operator]
    assert plain.ttft_s is None


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_top_logprobs_keyed_by_token_id(client: TargetClient, endpoint: Endpoint, stream: bool) -> None:
    r = await client.generate(_request(endpoint, _text(20), max_tokens=6, top_logprobs=5, stream=stream))
    assert r.ok, r.error
    for chosen, logprob, top in zip(r.output_token_ids, r.token_logprobs, r.top_logprobs, strict=False):
        assert all(isinstance(k, int) for k in top)
        assert 5 <= len(top) <= 6  # vLLM adds the chosen token when it is outside the top k
        assert chosen in top and top[chosen] == pytest.approx(logprob)
        assert logprob <= 0


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_cached_tokens_reported_on_repeat(client: TargetClient, endpoint: Endpoint, stream: bool) -> None:
    text = _text(100)
    first = await client.generate(_request(endpoint, text, max_tokens=2, stream=stream))
    second = await client.generate(_request(endpoint, text, max_tokens=2, stream=stream))
    assert first.ok and second.ok
    assert first.cached_tokens == 0
    assert second.cached_tokens is not None and second.cached_tokens > 0
    assert second.cached_tokens % 32 == 0 and second.cached_tokens < second.prompt_tokens  # type: ignore[operator]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_http_error_is_a_result(client: TargetClient, endpoint: Endpoint, stream: bool) -> None:
    req = _request(endpoint, _text(5), stream=stream)
    req.model = "no-such-model"
    r = await client.generate(req)
    assert r.ok is False
    assert r.status in (400, 404)
    assert r.error and "no-such-model" in r.error
    assert r.output_token_ids == []


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_connection_refused_is_a_result(stream: bool) -> None:
    async with TargetClient(f"http://127.0.0.1:{free_port()}", timeout_s=5) as c:
        r = await c.generate(_request("completions", "bosu daru", stream=stream))
    assert r.ok is False and r.status is None
    assert r.error and "Connect" in r.error
    assert r.latency_s is not None


async def test_models_and_reset(client: TargetClient) -> None:
    assert (await client.models())[0] == MODEL
    assert {e["id"] for e in await client.model_entries()} >= {MODEL, "adapter-a", "adapter-b"}
    text = _text(70)
    await client.generate(_request("completions", text, max_tokens=1))
    warm = await client.generate(_request("completions", text, max_tokens=1))
    assert await client.reset_prefix_cache() is True
    cold = await client.generate(_request("completions", text, max_tokens=1))
    assert warm.cached_tokens and warm.cached_tokens > 0
    assert cold.cached_tokens == 0
