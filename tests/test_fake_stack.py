"""The shared fake stack (tests/fake_stack.py): the harness client against it reads ids, logprobs and
cached-token counts that follow bench/fake_server.py's prefix-cache model exactly."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness.client import GenerationRequest, GenerationResult, TargetClient
from harness.history.record import Incident
from harness.scenario.words import word_pool
from harness.stacks.base import Stack
from tests.fake_stack import MODEL, FakeStack, chat_ids, generate, tokenize

BLOCK = 4
WORDS = word_pool()
PROMPT = " ".join(WORDS[:10])  # 10 tokens: two whole blocks may be cached, never the last token


@pytest.fixture(scope="module")
def stack() -> Iterator[FakeStack]:
    with FakeStack(block_size=BLOCK) as s:
        yield s


@pytest.fixture(autouse=True)
def empty_cache(stack: FakeStack) -> None:
    assert stack.server is not None
    stack.server.cache.reset()


async def ask(url: str, prompt: str = PROMPT, **kw: object) -> GenerationResult:
    async with TargetClient(url, timeout_s=10) as client:
        return await client.generate(GenerationRequest(endpoint="completions", model=MODEL, prompt=prompt,
                                                       max_tokens=8, **kw))  # type: ignore[arg-type]


def test_is_an_owned_restartable_stack(stack: FakeStack) -> None:
    assert isinstance(stack, Stack)
    assert stack.traits.owned and stack.traits.can_restart and stack.alive
    stack.check_alive()


@pytest.mark.parametrize("stream", [False, True])
async def test_ids_and_logprobs_are_the_servers_own(stack: FakeStack, stream: bool) -> None:
    r = await ask(stack.base_url, stream=stream)
    ids = tokenize(PROMPT)
    assert r.ok and r.prompt_token_ids == ids
    assert r.output_token_ids == generate(ids, 8, None)
    assert r.token_ids_source == "server" and r.finish_reason == "length"
    assert len(r.top_logprobs) == 8
    for token, top in zip(r.output_token_ids, r.top_logprobs, strict=True):
        assert len(top) == 5 and top[token] == max(top.values())


async def test_chat_prompt_ids_follow_the_template(stack: FakeStack) -> None:
    messages = [{"role": "system", "content": PROMPT}, {"role": "user", "content": WORDS[20]}]
    async with TargetClient(stack.base_url, timeout_s=10) as client:
        r = await client.generate(GenerationRequest(endpoint="chat", model=MODEL, messages=messages, max_tokens=4))
    assert r.ok and r.prompt_token_ids == chat_ids(messages)
    assert r.output_token_ids == generate(chat_ids(messages), 4, None)


async def test_cached_tokens_follow_the_block_cache(stack: FakeStack) -> None:
    first = await ask(stack.base_url)
    assert first.cached_tokens == 0
    again = await ask(stack.base_url)
    assert again.cached_tokens == 8  # (10 - 1) // 4 whole blocks: never the whole prompt
    # A continuation reuses the cached prompt + output (less the last output token): 17 -> 16.
    follow = await ask(stack.base_url, PROMPT + first.output_text + " " + " ".join(WORDS[30:34]))
    assert follow.prompt_token_ids is not None and len(follow.prompt_token_ids) == 22
    assert follow.cached_tokens == 16
    other = await ask(stack.base_url, " ".join(WORDS[100:110]))
    assert other.cached_tokens == 0


async def test_a_salt_is_its_own_cache_domain(stack: FakeStack) -> None:
    await ask(stack.base_url)
    assert (await ask(stack.base_url, cache_salt="a")).cached_tokens == 0
    assert (await ask(stack.base_url, cache_salt="b")).cached_tokens == 0
    assert (await ask(stack.base_url, cache_salt="a")).cached_tokens == 8
    assert (await ask(stack.base_url)).cached_tokens == 8


async def test_reset_empties_the_cache(stack: FakeStack) -> None:
    await ask(stack.base_url)
    async with TargetClient(stack.base_url, timeout_s=10) as client:
        assert await client.reset_prefix_cache()
    assert (await ask(stack.base_url)).cached_tokens == 0


async def test_process_mode_restart_is_a_cold_server_and_an_incident() -> None:
    with FakeStack("process", block_size=BLOCK) as s:
        assert s.alive and s.server is None
        await ask(s.base_url)
        assert (await ask(s.base_url)).cached_tokens == 8
        assert s.events() == []
        url = s.restart()
        assert url == s.base_url and s.alive
        assert (await ask(url)).cached_tokens == 0
        [event] = s.events()
        assert isinstance(event, Incident) and event.what == "restart" and event.caused_by_harness
    assert not s.alive
    with pytest.raises(Exception, match="not started"):
        _ = s.base_url
