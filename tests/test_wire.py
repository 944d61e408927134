"""Pure logic on the hot path: SSE line splitting, fast JSON, history round trips."""

from __future__ import annotations

import math
import random

from httpx_sse._decoders import SSEDecoder

from harness import fastjson
from harness.history.record import Operation, _from_json, _to_json
from harness.target.client import _by_id, _SSELines

STREAM = (b'data: {"a": 1}\r\n\r\n'
          b'event: ping\n: a comment\ndata: {"b":\ndata: 2}\n\n'
          b'data: [DONE]\r\r')


def _events(chunks: list[bytes]) -> list[tuple[str, str]]:
    splitter, decoder, out = _SSELines(), SSEDecoder(), []
    for chunk in chunks:
        for line in splitter.feed(chunk):
            if (ev := decoder.decode(line)) is not None:
                out.append((ev.event, ev.data))
    for line in [*splitter.close(), ""]:
        if (ev := decoder.decode(line)) is not None:
            out.append((ev.event, ev.data))
    return out


def test_sse_lines_give_the_same_events_however_the_stream_is_cut() -> None:
    whole = _events([STREAM])
    assert whole == [("message", '{"a": 1}'), ("ping", '{"b":\n2}'), ("message", "[DONE]")]
    rng = random.Random(7)
    for _ in range(300):  # every cut, including between a CR and its LF and inside a UTF-8 line
        cuts = sorted(rng.sample(range(1, len(STREAM)), rng.randint(1, 8)))
        chunks = [STREAM[a:b] for a, b in zip([0, *cuts], [*cuts, len(STREAM)])]
        assert _events(chunks) == whole, chunks


def test_sse_lines_keep_utf8_and_a_final_line_without_ending() -> None:
    text = "data: caf\u00e9 \u79df\u6237".encode()
    assert _events([text[:7], text[7:]]) == [("message", "caf\u00e9 \u79df\u6237")]


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


def test_top_logprobs_by_id_skip_text_and_malformed_keys() -> None:
    assert _by_id({"token_id:12": -0.1, "token_id:-3": -2, "hello": -1.0, "token_id:x": -3.0}) == {12: -0.1, -3: -2.0}


def test_a_response_that_is_not_a_json_object_is_a_failed_result() -> None:
    """A 200 whose body (or stream event) is valid JSON but not an object fails the request."""
    import asyncio

    import httpx

    from harness.target.client import GenerationRequest, TargetClient

    bodies = {False: b"[1, 2]", True: b"data: 5\n\ndata: [DONE]\n\n"}

    def handler(request: httpx.Request) -> httpx.Response:
        stream = b'"stream":true' in request.content
        return httpx.Response(200, content=bodies[stream],
                              headers={"content-type": "text/event-stream" if stream else "application/json"})

    async def go(stream: bool) -> object:
        async with TargetClient("http://target.invalid", transport=httpx.MockTransport(handler)) as client:
            return await client.generate(GenerationRequest(endpoint="completions", model="m", prompt="p",
                                                           stream=stream))

    for stream in (False, True):
        result = asyncio.run(go(stream))
        assert not result.ok and "not a JSON object" in (result.error or ""), result  # type: ignore[attr-defined]
