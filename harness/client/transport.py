"""The HTTP transport under `TargetClient`: httpx's API over aiohttp.

The `httpx-aiohttp` package's transport, its per-request glue trimmed, costs several times less
CPU per request than httpx's own transport (see bench/README.md); aiohttp's errors are mapped
onto httpx's, so failures read the same on both (tests/test_transport.py). Set
`HARNESS_HTTP_TRANSPORT=httpx` to force httpx's own transport (`aiohttp` to require the other).
"""

from __future__ import annotations

import asyncio
import os
import ssl
import sys
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import httpx


def _aiohttp_error_as_httpx(exc: BaseException, request: httpx.Request) -> BaseException:
    """The httpx exception a given aiohttp (or httpx-aiohttp-mapped) exception stands for."""
    import aiohttp

    cause = exc.__cause__ if isinstance(exc, httpx.HTTPError) and exc.__cause__ is not None else exc
    connect_timeout: list[tuple[type[BaseException], type[httpx.TransportError]]] = (
        [(aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout)] if hasattr(aiohttp, "ConnectionTimeoutError") else [])
    table: list[tuple[type[BaseException], type[httpx.TransportError]]] = [
        (aiohttp.ClientConnectorError, httpx.ConnectError),
        *connect_timeout,
        (aiohttp.ServerTimeoutError, httpx.ReadTimeout),
        (asyncio.TimeoutError, httpx.ReadTimeout),
        (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),
        (aiohttp.ClientPayloadError, httpx.RemoteProtocolError),
        (aiohttp.ClientResponseError, httpx.RemoteProtocolError),
        (aiohttp.ClientOSError, httpx.ReadError),
        (aiohttp.ClientError, httpx.TransportError),
    ]
    for kind, mapped in table:
        if kind and isinstance(cause, kind):
            return mapped(str(cause) or type(cause).__name__, request=request)
    return exc


def _aiohttp_transport(limits: httpx.Limits, verify: ssl.SSLContext | bool = True) -> httpx.AsyncBaseTransport:
    """httpx-aiohttp's transport (its connection pool and settings), with every aiohttp error
    raised as the matching httpx error, and its per-request glue trimmed to what TargetClient
    needs: the timeout object and parsed URL made once rather than per request, headers handed
    over as pairs, and the body read straight from aiohttp's stream (one generator, not two).
    It serves no proxy and no SNI override, which TargetClient never sets."""
    import aiohttp
    import yarl
    from httpx_aiohttp import AiohttpTransport

    def reraise(exc: Exception, request: httpx.Request) -> NoReturn:
        out = _aiohttp_error_as_httpx(exc, request)
        if out is exc:
            raise exc
        raise out from exc

    class _Stream(httpx.AsyncByteStream):
        def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
            self._response, self._request = response, request

        async def __aiter__(self) -> AsyncIterator[bytes]:
            try:
                async for chunk in self._response.content.iter_chunked(1 << 16):
                    yield chunk
            except Exception as exc:
                reraise(exc, self._request)

        async def aclose(self) -> None:
            try:
                await self._response.__aexit__(None, None, None)
            except Exception as exc:
                reraise(exc, self._request)

    class _Transport(AiohttpTransport):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._timeouts: dict[tuple[Any, ...], aiohttp.ClientTimeout] = {}
            self._urls: dict[str, yarl.URL] = {}

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if not isinstance(self.client, aiohttp.ClientSession):
                self.client = self.get_client()
            timeout = request.extensions.get("timeout") or {}
            key = (timeout.get("connect"), timeout.get("read"), timeout.get("pool"))
            client_timeout = self._timeouts.get(key)
            if client_timeout is None:
                client_timeout = self._timeouts[key] = aiohttp.ClientTimeout(
                    sock_connect=key[0], sock_read=key[1], connect=key[2])
            url_text = str(request.url)
            url = self._urls.get(url_text)
            if url is None:
                url = yarl.URL(url_text, encoded=True)
                if len(self._urls) < 1024:  # the client's few paths
                    self._urls[url_text] = url
            # httpx writes str header values as ASCII (it refuses others), so latin-1 reads them
            # back unchanged without httpx guessing the encoding per request.
            request.headers.encoding = "latin-1"
            headers = request.headers.multi_items()
            data: bytes | httpx.AsyncByteStream | None
            try:
                data = request.content or None
            except httpx.RequestNotRead:  # a streamed body: aiohttp frames it itself
                data = request.stream  # type: ignore[assignment]
                headers = [(k, v) for k, v in headers if k.lower() != "transfer-encoding"]
            try:
                response = await self.client.request(
                    request.method, url, headers=headers, data=data, allow_redirects=False,
                    auto_decompress=False, compress=False, timeout=client_timeout).__aenter__()
            except Exception as exc:
                reraise(exc, request)
            extensions = {"http_version": b"HTTP/1.1"}
            if response.reason:
                extensions["reason_phrase"] = response.reason.encode()
            return httpx.Response(status_code=response.status, headers=response.raw_headers,
                                  stream=_Stream(response, request), request=request, extensions=extensions)

    return _Transport(limits=limits, verify=verify)


def default_transport(limits: httpx.Limits, verify: ssl.SSLContext | bool = True) -> httpx.AsyncBaseTransport | None:
    """The transport TargetClient uses unless given one: aiohttp's when `httpx-aiohttp` is
    installed (HARNESS_HTTP_TRANSPORT=auto, the default, or =aiohttp), else None (httpx's own).
    `verify`: the TLS settings (`Connection.verify`)."""
    choice = os.environ.get("HARNESS_HTTP_TRANSPORT", "auto").strip().lower()
    if choice == "httpx":
        return None
    try:
        return _aiohttp_transport(limits, verify)
    except ImportError:
        if choice == "aiohttp":
            raise
        return None


def over_aiohttp(transport: httpx.AsyncBaseTransport | None) -> bool:
    """The transport is httpx-aiohttp's (the package is loaded wherever its transport is in use)."""
    module = sys.modules.get("httpx_aiohttp")
    return module is not None and isinstance(transport, module.AiohttpTransport)
