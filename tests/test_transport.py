"""TargetClient's default transport (httpx's API over aiohttp) against scripted broken servers:
every way a response can go wrong reaches the caller as the httpx error that httpx's own
transport raises, and as a failed result (never an exception) from `generate`. Both transports
are run on the same servers, so the two must agree."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web

from harness.client import GenerationRequest, TargetClient, default_transport
from tests.scripted import serve_app

EVENT = (b'data: {"model": "m", "choices": [{"index": 0, "text": " a", "token_ids": [7], "logprobs": '
         b'{"tokens": ["token_id:7"], "token_logprobs": [-0.5], "top_logprobs": [{"token_id:7": -0.5}]}}]}\n\n')


async def _app() -> web.Application:
    gate = asyncio.Event()  # never set: a handler waiting on it hangs until the client gives up

    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        mode = body["prompt"]
        if mode == "ok":
            resp = web.StreamResponse(
                headers={"Content-Type": "text/event-stream", "X-Echo": request.headers.get("X-Echo", "")})
            await resp.prepare(request)
            await resp.write(EVENT)
            await resp.write(b"data: [DONE]\n\n")
            return resp
        if mode == "midstream":  # one event, then the connection is cut
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await resp.write(EVENT)
            request.transport.close()  # type: ignore[union-attr]
            return resp
        if mode == "hang":
            await gate.wait()
        if mode == "silent-stream":  # headers and one event, then nothing
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await resp.write(EVENT)
            await gate.wait()
        if mode == "after-done":  # a [DONE] and then more bytes than the client reads on for
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await resp.write(EVENT + b"data: [DONE]\n\n")
            for _ in range(64):
                await resp.write(b": padding " + b"x" * 4096 + b"\n\n")
            await gate.wait()
        if mode in ("held-open", "cut-after-done"):  # a complete answer, then the stream is held or cut
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await resp.write(EVENT + b"data: [DONE]\n\n")
            if mode == "cut-after-done":
                request.transport.close()  # type: ignore[union-attr]
                return resp
            await gate.wait()
        if mode == "drop":  # no response at all
            request.transport.close()  # type: ignore[union-attr]
            await gate.wait()
        return web.json_response({"error": {"message": f"unknown mode {mode}"}}, status=418)

    app = web.Application()
    app.router.add_post("/v1/completions", handler)
    return app


@pytest.fixture
async def server() -> AsyncIterator[str]:
    runner, url = await serve_app(await _app())
    try:
        yield url
    finally:
        await runner.cleanup()


TRANSPORTS = ["aiohttp", "httpx"]


def _client(url: str, transport: str, timeout_s: float = 10.0) -> TargetClient:
    limits = httpx.Limits(max_connections=8, max_keepalive_connections=8)
    chosen = default_transport(limits) if transport == "aiohttp" else httpx.AsyncHTTPTransport(limits=limits)
    return TargetClient(url, timeout_s=timeout_s, transport=chosen)


def _req(mode: str, stream: bool = True, **kw: object) -> GenerationRequest:
    return GenerationRequest(endpoint="completions", model="m", prompt=mode, stream=stream, **kw)  # type: ignore[arg-type]


def test_the_default_transport_is_the_aiohttp_one() -> None:
    from httpx_aiohttp import AiohttpTransport

    assert isinstance(default_transport(httpx.Limits()), AiohttpTransport)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_healthy_stream_reads_whole_with_request_headers_sent(server: str, transport: str) -> None:
    async with _client(server, transport) as client:
        r = await client.generate(_req("ok", headers={"X-Echo": "tenant-7"}))
        plain = await client._http.post("/v1/completions", json={"prompt": "ok"}, headers={"X-Echo": "again"})
    assert r.ok and r.output_token_ids == [7] and r.top_logprobs == [{7: -0.5}] and r.output_text == " a", r
    assert plain.headers["x-echo"] == "again" and plain.headers["content-type"] == "text/event-stream"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_stream_cut_mid_way_is_a_remote_protocol_error(server: str, transport: str) -> None:
    async with _client(server, transport) as client:
        r = await asyncio.wait_for(client.generate(_req("midstream")), 20)
        with pytest.raises(httpx.RemoteProtocolError):
            async with client._http.stream("POST", "/v1/completions", json={"prompt": "midstream"}) as resp:
                async for _ in resp.aiter_bytes():
                    pass
    assert not r.ok and r.status == 200 and r.error and r.error.startswith("RemoteProtocolError"), r


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("mode", ["hang", "silent-stream"])
async def test_a_silent_server_is_a_read_timeout(server: str, transport: str, mode: str) -> None:
    async with _client(server, transport, timeout_s=0.5) as client:
        r = await asyncio.wait_for(client.generate(_req(mode)), 20)
    assert not r.ok and r.error and r.error.startswith("ReadTimeout"), r


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_dropped_connection_is_a_failed_result(server: str, transport: str) -> None:
    async with _client(server, transport) as client:
        r = await asyncio.wait_for(client.generate(_req("drop", stream=False)), 20)
    assert not r.ok and r.status is None and r.error and r.error.startswith("RemoteProtocolError"), r


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("mode", ["after-done", "held-open", "cut-after-done"])
async def test_a_stream_that_misbehaves_after_done_has_still_answered(server: str, transport: str, mode: str) -> None:
    """The client reads on past [DONE] to the end of the stream, within bounds: a server that
    keeps sending after [DONE], holds the stream open past the client's read timeout, or cuts the
    connection, has given a complete answer, and the result says so."""
    async with _client(server, transport, timeout_s=5) as client:
        r = await asyncio.wait_for(client.generate(_req(mode)), 30)
    assert r.ok and r.output_token_ids == [7], r
