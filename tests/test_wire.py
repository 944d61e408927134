"""Pure logic on the hot path: SSE event splitting, logprob reading, fast JSON, history round trips."""

from __future__ import annotations

import asyncio
import math
import random
from typing import Any

import httpx
import pytest
from httpx_sse import EventSource

from harness import fastjson
from harness.client import SSEData, by_id, stream_data
from harness.history.record import Operation, _from_json, _to_json

STREAM = (b'data: {"a": 1}\r\n\r\n'
          b'event: ping\n: a comment\ndata: {"b":\ndata: 2}\n\n'
          b'data: [DONE]\r\r')


def _events(chunks: list[bytes]) -> list[bytes]:
    events = SSEData()
    return [data for chunk in chunks for data in events.feed(chunk)] + events.close()


def _reference(stream: bytes) -> list[bytes]:
    """httpx-sse's public `EventSource` over the whole stream (what `SSEData` must equal)."""
    response = httpx.Response(200, headers={"Content-Type": "text/event-stream"}, content=stream)
    return [ev.data.encode() for ev in EventSource(response).iter_sse() if ev.data]


def _cut(stream: bytes, rng: random.Random) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(stream)), min(len(stream) - 1, rng.randint(1, 8))))
    return [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]


def test_sse_data_is_the_same_however_the_stream_is_cut() -> None:
    whole = _events([STREAM])
    assert whole == [b'{"a": 1}', b'{"b":\n2}', b"[DONE]"] == _reference(STREAM)
    rng = random.Random(7)
    for _ in range(300):  # every cut, including between a CR and its LF and inside a UTF-8 line
        chunks = _cut(STREAM, rng)
        assert _events(chunks) == whole, chunks


def test_sse_fast_path_equals_the_decoder_on_random_streams() -> None:
    """Streams mixing the fast shape (one `data: ` line, LF) with every other SSE form, cut at
    random: `SSEData` gives exactly the decoder's events, in order."""
    pieces = [b'data: {"x": 1}\n\n', "data: caf\u00e9 \u79df\n\n".encode(), b"data: \n\n", b"data:  two\n\n",
              b"data:nospace\n\n", b": comment\n\n", b"event: e\ndata: ev\n\n", b"data: a\ndata: b\n\n",
              b"id: 7\n\n", b"\n", b"\n\n\n", b"data: unfinished\n", b"retry: 10\ndata: r\n\n", b"data",
              b"data: crlf\r\n\r\n", b"data: cr\r\r"]
    rng = random.Random(11)
    for _ in range(2000):
        stream = b"".join(rng.choices(pieces, k=rng.randint(1, 12)))
        assert _events([stream]) == _reference(stream) == stream_data(stream), stream
        if len(stream) > 1:
            chunks = _cut(stream, rng)
            assert _events(chunks) == _reference(stream), chunks


def test_sse_data_keeps_utf8_split_across_chunks() -> None:
    text = "data: caf\u00e9 \u79df\u6237\n\n".encode()
    assert _events([text[:7], text[7:11], text[11:]]) == ["caf\u00e9 \u79df\u6237".encode()]


def test_fastjson_round_trips_what_orjson_refuses() -> None:
    assert math.isnan(fastjson.loads(b'{"x": NaN}')["x"])
    assert fastjson.loads(fastjson.dumps({"x": float("-inf")}, finite=False)) == {"x": float("-inf")}
    assert fastjson.loads(fastjson.dumps({"n": 2**70, 3: "k"})) == {"n": 2**70, "3": "k"}


def _op(**kw: object) -> Operation:
    base = dict(run="main", scenario="s", op_id="s/main/u/0", user="u", tenant="t", turn=0, model="m",
                endpoint="completions", stream=True, cache_salt=None, request={"prompt": "p"},
                invoke_s=1.0, complete_s=2.0, ok=True, output_token_ids=[5, 6], output_text=" a b",
                token_logprobs=[-0.5, -1.25], top_logprobs=[{5: -0.5, 9: -2.0}, {6: -1.25}])
    base.update(kw)
    return Operation(**base)  # type: ignore[arg-type]


def test_history_records_round_trip_including_nan_logprobs() -> None:
    op = _op()
    assert _from_json(_to_json(op)) == op
    missing = _op(token_logprobs=[float("nan"), -1.0], top_logprobs=[{5: float("-inf")}, {}])
    back = _from_json(_to_json(missing))
    assert math.isnan(back.token_logprobs[0]) and back.token_logprobs[1] == -1.0
    assert back.top_logprobs == [{5: float("-inf")}, {}]
    huge = _op(token_logprobs=[-1e308, -1e308], top_logprobs=[{5: -1e308, 9: -1e308}, {6: float("nan")}])
    back = _from_json(_to_json(huge))  # finite values whose sum overflows; a NaN among the tops
    assert back.token_logprobs == [-1e308, -1e308] and back.top_logprobs[0] == {5: -1e308, 9: -1e308}
    assert math.isnan(back.top_logprobs[1][6])


def test_top_logprobs_by_id_skip_text_and_malformed_keys() -> None:
    top = {"token_id:12": -0.1, "token_id:-3": -2, "hello": -1.0, "token_id:x": -3.0}
    assert by_id(top) == {12: -0.1, -3: -2.0}
    ids = {"token_id:12": -0.1, "token_id:-3": -2.5}
    assert by_id(ids) == by_id(dict(ids)) == {12: -0.1, -3: -2.5}  # the second from the memo
    assert by_id({"token_id:12": None, "token_id:4": -1.0}) == {4: -1.0}  # a null logprob is left out
    for bad in ("abc", [1], {"v": 1}):
        with pytest.raises(ValueError, match="not a number"):
            by_id({"token_id:12": bad})


def _generate_against(bodies: dict[bool, bytes]) -> list[Any]:
    """`generate`'s results, plain and streamed, from a mock server answering 200 with `bodies[stream]`."""
    import httpx

    from harness.client import GenerationRequest, TargetClient

    def handler(request: httpx.Request) -> httpx.Response:
        stream = b'"stream":true' in request.content
        return httpx.Response(200, content=bodies[stream],
                              headers={"content-type": "text/event-stream" if stream else "application/json"})

    async def go(stream: bool) -> Any:
        async with TargetClient("http://target.invalid", transport=httpx.MockTransport(handler)) as client:
            return await client.generate(GenerationRequest(endpoint="completions", model="m", prompt="p",
                                                           stream=stream))

    return [asyncio.run(go(stream)) for stream in (False, True)]


def test_a_response_that_is_not_a_json_object_is_a_failed_result() -> None:
    """A 200 whose body (or stream event) is valid JSON but not an object fails the request."""
    for result in _generate_against({False: b"[1, 2]", True: b"data: 5\n\ndata: [DONE]\n\n"}):
        assert not result.ok and "not a JSON object" in (result.error or ""), result


@pytest.mark.parametrize("body", [
    b'{"choices": ["x"]}',
    b'{"choices": [{"index": 0, "text": 5}]}',
    b'{"choices": [{"logprobs": {"tokens": ["token_id:1"], "token_logprobs": [-1.0], "top_logprobs": [[1]]}}]}',
    b'{"choices": [{"logprobs": {"tokens": ["token_id:1"], "token_logprobs": ["low"]}}]}',
    b'{"usage": {"prompt_tokens_details": {"cached_tokens": "many"}}, "choices": []}',
])
def test_a_response_of_the_wrong_shape_is_a_failed_result(body: bytes) -> None:
    """Valid JSON whose fields have the wrong types fails that request (status and reason kept),
    streamed or not, instead of raising out of the client and ending the run."""
    for result in _generate_against({False: body, True: b"data: " + body + b"\n\ndata: [DONE]\n\n"}):
        assert not result.ok and result.status == 200 and result.error, result


def test_a_null_logprob_is_recorded_as_missing_on_both_endpoints() -> None:
    from harness.client import Accumulator

    completions = Accumulator("completions")
    completions.add({"choices": [{"index": 0, "text": " a", "logprobs": {
        "tokens": ["token_id:3", "token_id:4"], "token_logprobs": [None, -1.5],
        "top_logprobs": [{"token_id:3": None, "token_id:8": -2.0}, None]}}]})
    chat = Accumulator("chat")
    chat.add({"choices": [{"index": 0, "delta": {"content": " a"}, "logprobs": {"content": [
        {"token": "token_id:3", "logprob": None, "top_logprobs": [{"token": "token_id:8", "logprob": -2.0},
                                                                   {"token": "token_id:3", "logprob": None}]},
        {"token": "token_id:4", "logprob": -1.5, "top_logprobs": []}]}}]})
    for acc in (completions, chat):
        r = acc.finish()
        assert r.output_token_ids == [3, 4] and math.isnan(r.token_logprobs[0]) and r.token_logprobs[1] == -1.5
        assert r.top_logprobs == [{8: -2.0}, {}]
