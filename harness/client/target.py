"""Async OpenAI-compatible client for one target, returning typed, complete results.

Speaks `/v1/completions` and `/v1/chat/completions`, streaming (SSE) and not, and asks for
token ids, top logprobs keyed by token id and cached-token counts. A failed request is a result
with `ok=False` and its status and error body, never an exception: the driver records it.
A server that keys logprobs by token text gets its ids recovered (`client.llamacpp_ids`).
Transport: httpx's API, over aiohttp where installed (`client.transport`).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx

from harness import fastjson
from harness.client.connection import TENANT_HEADER, Connection, current
from harness.client.llamacpp_ids import TextIds
from harness.client.parse import Accumulator
from harness.client.sse import SSEData
from harness.client.transport import default_transport, over_aiohttp
from harness.client.types import GenerationRequest, GenerationResult
from harness.plan.identity import wire_body

_MAX_AFTER_DONE = 1 << 16  # bytes read past a stream's [DONE] before the stream is left unread
_DRAIN_AFTER_DONE_S = 1.0  # and seconds waited for its end


class _NoCookies(httpx.Cookies):
    """A cookie jar that keeps nothing."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class _Client(httpx.AsyncClient):
    """httpx's client without cookie handling: simulated users of an API keep no session, and
    httpx reads every response's cookies through urllib at more CPU than parsing the response.
    (One jar shared by every simulated user would also link users that the scenario keeps apart.)"""

    @property
    def cookies(self) -> httpx.Cookies:
        return _NO_COOKIES

    @cookies.setter
    def cookies(self, value: Any) -> None:
        if value:
            raise ValueError("TargetClient keeps no cookies")


_NO_COOKIES = _NoCookies()


class TargetClient:
    """An httpx-based async client for one OpenAI-compatible base URL."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 60.0,
        api_key: str | None = None,
        max_connections: int = 512,
        transport: httpx.AsyncBaseTransport | None = None,
        keepalive: bool = True,
        connection: Connection | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        # Credentials, headers, TLS: the given connection, else the one in force
        # (`harness.client.connection.using`), so every client of a run carries them.
        self.connection = conn = connection if connection is not None else current()
        headers = conn.base_headers()
        if api_key:
            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            headers["Authorization"] = f"Bearer {api_key}"
        verify = conn.verify()
        # keepalive=False gives every request its own connection, so a server that drops a
        # connection after an error cannot make the *next* request fail in its place.
        limits = httpx.Limits(max_connections=max_connections,
                              max_keepalive_connections=max_connections if keepalive else 0)
        # Without keep-alive, httpx's own transport: it honours "no connection reuse", which
        # aiohttp's pool does not, and hostile traffic is no throughput path.
        chosen = transport if transport is not None else (default_transport(limits, verify) if keepalive else None)
        self._http = _Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s)),
            headers=headers,
            limits=limits,
            transport=chosen,
            verify=verify,
        )
        # After a stream's [DONE]: read on to its end over aiohttp (leaving httpx's stream
        # generators suspended costs their finalisation through the event loop); over httpx's
        # own transport stop there as before, which closes the connection: httpcore's pool costs
        # more CPU per request with many connections to reuse than a new connection does.
        self._drain_after_done = over_aiohttp(chosen)
        self._text_ids = TextIds(self._http)

        self._urls: dict[str, httpx.URL] = {}
        defaults = dict(self._http.headers)
        self._json_headers = {**defaults, "Content-Type": "application/json"}  # bodies: fastjson
        self._sse_headers = {**self._json_headers, "Accept": "text/event-stream"}
        self._extensions = {"timeout": self._http.timeout.as_dict()}
        # A tenant's own headers (its key) over the defaults, for requests naming the tenant.
        self._tenant_json: dict[str, dict[str, str]] = {}
        self._tenant_sse: dict[str, dict[str, str]] = {}
        for tenant, own in conn.tenant_headers().items():
            self._tenant_json[tenant] = _over(self._json_headers, own)
            self._tenant_sse[tenant] = _over(self._sse_headers, own)

    async def __aenter__(self) -> TargetClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def _url(self, path: str) -> httpx.URL:
        """An absolute URL, parsed once per path (httpx would parse and merge it per request)."""
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = httpx.URL(self.base_url + path)
        return url

    def _request(self, req: GenerationRequest, sse: bool) -> httpx.Request:
        """The wire request, built from headers merged once per client: httpx's `build_request`
        re-parses the URL and re-merges every default header per call, at more CPU than the
        rest of a request's own work. The client's defaults and timeout apply as usual."""
        base = self._sse_headers if sse else self._json_headers
        body = req.body()
        if self._tenant_json and req.headers and (tenant := req.headers.get(TENANT_HEADER)) is not None:
            base = (self._tenant_sse if sse else self._tenant_json).get(tenant, base)
            if self.connection.gateway_salts:
                body = wire_body(body, tenant)
        headers: dict[str, str] | httpx.Headers = {**base, **req.headers} if req.headers else base
        if req.headers and not all(v.isascii() for v in req.headers.values()):
            headers = httpx.Headers(headers, encoding="latin-1")  # a hostile header value: sent as Latin-1 bytes
        return httpx.Request("POST", self._url(req.path), content=fastjson.dumps(body), headers=headers,
                             extensions=self._extensions)

    async def generate(self, req: GenerationRequest) -> GenerationResult:
        """Send one request; every failure comes back as a result with ok=False."""
        acc = Accumulator(req.endpoint)
        start = time.perf_counter()
        try:
            resp = await self._http.send(self._request(req, req.stream), stream=True)
            try:
                acc.result.status = resp.status_code
                if resp.status_code != 200:
                    body = (await resp.aread()).decode(errors="replace")
                    return _failed(resp.status_code, body, start)
                if req.stream:
                    await self._read_stream(resp, acc, start)
                else:
                    payload = fastjson.loads(await resp.aread())
                    if not isinstance(payload, dict):
                        raise ValueError(f"response is not a JSON object: {str(payload)[:500]}")
                    acc.add(payload)
            finally:
                await resp.aclose()
        except (httpx.HTTPError, json.JSONDecodeError, ValueError) as exc:
            return _failed(acc.result.status, f"{type(exc).__name__}: {exc}", start)
        result = acc.finish()
        result.latency_s = time.perf_counter() - start
        if result.ok and not result.output_token_ids and (acc.token_texts or result.output_text):
            await self._text_ids.recover(req, acc, result)
        if not result.output_token_ids and result.finish_reason is None:
            result.ok = False
            result.error = result.error or "response carried no choice"
        return result

    async def _read_stream(self, resp: httpx.Response, acc: Accumulator, start: float) -> None:
        """Read an SSE stream from the raw bytes (`SSEData`; httpx's text and line decoders
        under httpx-sse cost more CPU than the rest of the request)."""
        events, done = SSEData(), False
        chunks = resp.aiter_bytes()
        async for chunk in chunks:
            if self._on_events(events.feed(chunk), acc, start):
                done = True
                break
        if not done and not self._on_events(events.close(), acc, start):
            raise httpx.RemoteProtocolError("stream ended without [DONE]")
        if done and self._drain_after_done:
            await self._drain(chunks)

    @staticmethod
    async def _drain(chunks: AsyncIterator[bytes]) -> None:
        """Read on past [DONE] to the end of the stream (see __init__), within bounds: a server
        that holds the stream open, sends on or breaks it after [DONE] has still answered."""
        after = 0
        try:
            async with asyncio.timeout(_DRAIN_AFTER_DONE_S):
                async for chunk in chunks:
                    after += len(chunk)
                    if after > _MAX_AFTER_DONE:
                        return
        except (TimeoutError, httpx.HTTPError):
            return

    @staticmethod
    def _on_events(datas: list[bytes], acc: Accumulator, start: float) -> bool:
        """Fold these events' data into the result; True at the stream's `[DONE]`."""
        for data in datas:
            if data.strip() == b"[DONE]":
                return True
            payload = fastjson.loads(data)
            if not isinstance(payload, dict):
                raise ValueError(f"stream event is not a JSON object: {_excerpt(data)}")
            if "error" in payload and not payload.get("choices"):
                raise ValueError(f"error event in stream: {_excerpt(data)}")
            acc.add(payload)  # first: it refuses choices of the wrong shape
            if acc.result.ttft_s is None and any(
                (c.get("text") or (c.get("delta") or {}).get("content") or c.get("token_ids"))
                for c in payload.get("choices") or []
            ):
                acc.result.ttft_s = time.perf_counter() - start
        return False

    async def tokenize(self, model: str | None, text: str) -> list[int] | None:
        """The server's own tokenization of `text` (POST /extras/tokenize; None: not offered)."""
        return await self._text_ids.tokenize(model, text)

    async def get_json(self, path: str) -> Any:
        resp = await self._http.get(path)
        resp.raise_for_status()
        return resp.json()

    async def get_text(self, path: str) -> str:
        resp = await self._http.get(path)
        resp.raise_for_status()
        return resp.text

    async def models(self) -> list[str]:
        data = await self.get_json("/v1/models")
        return [m["id"] for m in data.get("data", [])]

    async def model_entries(self) -> list[dict[str, Any]]:
        data = await self.get_json("/v1/models")
        return list(data.get("data", []))

    async def tenant_status(self, tenant: str) -> int | None:
        """The HTTP status of GET /v1/models sent with `tenant`'s own headers (None: no answer)."""
        own = self.connection.tenant_headers().get(tenant, {})
        try:
            resp = await self._http.get("/v1/models", headers=own)
        except httpx.HTTPError:
            return None
        return resp.status_code

    async def reset_prefix_cache(self) -> bool:
        """Ask the server to drop its prefix cache; True when it said yes. A reset disturbs every
        user of the server: against one the harness did not launch it is sent only with the
        connection's `allow_disruptive` (else False, nothing sent)."""
        if not self.connection.allow_disruptive:
            return False
        try:
            resp = await self._http.post("/reset_prefix_cache")
        except httpx.HTTPError:
            return False
        if resp.status_code != 200:
            return False
        try:
            body = resp.json()
        except ValueError:
            return True  # a bare 200: the reset was done
        # vLLM answers 200 with {"success": false} when it refuses (blocks still held): not a reset.
        return not (isinstance(body, dict) and body.get("success") is False)


def _over(base: dict[str, str], own: dict[str, str]) -> dict[str, str]:
    """`base` with `own`'s headers set over it (header names compared case-insensitively)."""
    names = {k.lower() for k in own}
    return {**{k: v for k, v in base.items() if k.lower() not in names}, **own}


def _excerpt(data: bytes) -> str:
    return data[:500].decode("utf-8", errors="replace")


def _failed(status: int | None, error: str, start: float) -> GenerationResult:
    return GenerationResult(ok=False, status=status, error=error[:2000], latency_s=time.perf_counter() - start)
