"""Async OpenAI-compatible client for one target, returning typed, complete results.

Speaks `/v1/completions` and `/v1/chat/completions`, streaming (SSE) and not, and asks for
token ids, top logprobs keyed by token id and cached-token counts. A failed request is a result
with `ok=False` and its status and error body, never an exception: the driver records it.
A cached-token count that the server did not report is `None` (unknown), never 0.

A server that keys logprobs by token *text* and returns no token ids (llama.cpp's Python server)
gets its ids recovered through its own tokenizer: each generated token's text is sent to
`POST /extras/tokenize` (cached per client) and must come back as exactly one id; if any
position cannot be mapped, the whole output text is tokenized instead. `token_ids_source`
says which happened ("server", "tokenize", "tokenize-text"), so checks can say so.

Transport: httpx's API throughout, over aiohttp (the `httpx-aiohttp` package's transport, its
per-request glue trimmed) when it is installed, which costs several times less CPU per request
than httpx's own transport (see bench/README.md); aiohttp's errors are mapped onto httpx's, so
failures read the same on both (tests/test_transport.py). Set `HARNESS_HTTP_TRANSPORT=httpx` to
force httpx's own transport (`aiohttp` to require the other).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn

import httpx
from httpx_sse._decoders import SSEDecoder

from harness import fastjson

Endpoint = Literal["completions", "chat"]
_TOKEN_ID_RE = re.compile(r"^token_id:(-?\d+)$")
_NAN = float("nan")
_MAX_AFTER_DONE = 1 << 16  # bytes read past a stream's [DONE] before the stream is left unread
_DRAIN_AFTER_DONE_S = 1.0  # and seconds waited for its end


@dataclass
class GenerationRequest:
    """One request as the harness means it; `body()` renders the wire JSON."""

    endpoint: Endpoint
    model: str
    prompt: str | None = None
    messages: list[dict[str, str]] | None = None
    max_tokens: int = 16
    temperature: float = 0.0
    seed: int | None = None
    top_logprobs: int = 5
    stream: bool = False
    cache_salt: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def path(self) -> str:
        return "/v1/completions" if self.endpoint == "completions" else "/v1/chat/completions"

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "stream": self.stream,
            "return_tokens_as_token_ids": True,
            "return_token_ids": True,
        }
        if self.endpoint == "completions":
            body["prompt"] = self.prompt
            if self.top_logprobs:
                body["logprobs"] = self.top_logprobs
        else:
            body["messages"] = self.messages
            if self.top_logprobs:
                body["logprobs"] = True
                body["top_logprobs"] = self.top_logprobs
        if self.seed is not None:
            body["seed"] = self.seed
        if self.stream:
            body["stream_options"] = {"include_usage": True}
        if self.cache_salt is not None:
            body["cache_salt"] = self.cache_salt
        body.update(self.extra)
        return body


@dataclass
class GenerationResult:
    """What the target returned for one request, normalised across endpoints and streaming."""

    ok: bool
    status: int | None = None
    error: str | None = None
    served_model: str | None = None  # the model the server says answered (it may resolve aliases)
    output_token_ids: list[int] = field(default_factory=list)
    output_text: str = ""
    prompt_token_ids: list[int] | None = None
    token_logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[dict[int, float]] = field(default_factory=list)
    cached_tokens: int | None = None
    prompt_tokens: int | None = None
    ttft_s: float | None = None
    latency_s: float | None = None
    finish_reason: str | None = None
    # "server": ids as the server sent them; "tokenize": each token's text mapped to one id by the
    # server's /extras/tokenize; "tokenize-text": the whole output text tokenized; None: no ids.
    token_ids_source: str | None = None


_ID_OF_KEY: dict[str, int] = {}  # "token_id:N" -> N for the keys met so far (one per vocabulary entry)
_ID_MEMO_LIMIT = 1 << 20  # a server inventing keys without end cannot grow the memo past this


def _parse_token_id(token: str) -> int | None:
    if token[:9] != "token_id:":  # the common miss, without a regex
        return None
    digits = token[9:]
    if digits.isdigit():  # the common hit, without a regex (ASCII digits only: see isascii)
        return int(digits) if digits.isascii() else None
    m = _TOKEN_ID_RE.match(token)
    return int(m.group(1)) if m else None


def token_id_of(token: object) -> int | None:
    """N for a `token_id:N` key (vLLM's return_tokens_as_token_ids), else None (any other value).
    Keys are memoised: a stream repeats the same few thousand keys, and a dict lookup costs a
    fraction of parsing one."""
    if token.__class__ is not str:
        return None
    tid = _ID_OF_KEY.get(token)  # type: ignore[arg-type]
    if tid is None:
        tid = _parse_token_id(token)  # type: ignore[arg-type]
        if tid is not None and len(_ID_OF_KEY) < _ID_MEMO_LIMIT:
            _ID_OF_KEY[token] = tid  # type: ignore[index]
    return tid


def _by_id(top: dict[str, Any]) -> dict[int, float]:
    """Top logprobs keyed `token_id:N` as {N: logprob}. Keys that are not ids and null logprobs
    are left out; a logprob that is not a number raises ValueError (the request fails)."""
    try:  # the common case: every key met before, every value a number (sum refuses the rest)
        out = {_ID_OF_KEY[key]: lp for key, lp in top.items()}
        sum(out.values())
        return out
    except (KeyError, TypeError):
        pass
    out = {}
    for key, lp in top.items():
        tid = token_id_of(key)
        if tid is not None and lp is not None:
            out[tid] = _logprob(lp)
    return out


def _entries_by_id(entries: list[dict[str, Any]]) -> dict[int, float]:
    """Chat top logprobs (entries of `token` and `logprob`) as {N: logprob}, by `_by_id`'s rule."""
    return {t: _logprob(e["logprob"]) for e in entries
            if (t := token_id_of(e.get("token", ""))) is not None and e.get("logprob") is not None}


def _logprob(value: object) -> float:
    """A logprob as a float: a number, or a string that float() reads; anything else fails."""
    if value.__class__ is float:
        return value  # type: ignore[return-value]
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"logprob is not a number: {str(value)[:100]}") from None


class _SSELines:
    """Splits a byte stream into SSE lines (ended by CRLF, LF or CR), each decoded as UTF-8.
    A chunk may end mid-line or between the CR and LF of one line ending: both are carried over."""

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, chunk: bytes) -> list[str]:
        lines = (self._rest + chunk).splitlines(keepends=True)
        self._rest = b""
        if lines and (lines[-1].endswith(b"\r") or not lines[-1].endswith(b"\n")):
            self._rest = lines.pop()  # unfinished, or a CR whose LF may be in the next chunk
        return [line.rstrip(b"\r\n").decode("utf-8", errors="replace") for line in lines]

    def close(self) -> list[str]:
        rest, self._rest = self._rest, b""
        return [line.decode("utf-8", errors="replace") for line in rest.splitlines()]


class _SSEData:
    """The data of each SSE event in a byte stream, in order, as bytes (empty data is skipped).

    Servers send almost every event as one `data: ...` line and a blank line, with LF endings;
    those are cut straight from the bytes, which costs a fraction of decoding line by line.
    Every other block (comments, `event:` or `id:` fields, data over several lines) goes through
    httpx-sse's decoder, and a stream that uses CR line endings anywhere goes through it line by
    line from there on, so the events are the decoder's in every case."""

    def __init__(self) -> None:
        self._rest = b""
        self._decoder = SSEDecoder()
        self._lines: _SSELines | None = None  # line by line (a CR was seen)

    def feed(self, chunk: bytes) -> list[bytes]:
        if self._lines is None and b"\r" in chunk:
            self._lines, rest, self._rest = _SSELines(), self._rest, b""
            return self._decode(self._lines.feed(rest + chunk))
        if self._lines is not None:
            return self._decode(self._lines.feed(chunk))
        blocks = (self._rest + chunk if self._rest else chunk).split(b"\n\n")
        self._rest = blocks.pop()  # after the last blank line: the start of an event, or empty
        out: list[bytes] = []
        for block in blocks:
            if block[:6] == b"data: " and b"\n" not in block:
                if len(block) > 6:
                    out.append(block[6:])
            elif block:  # the block's lines, then the blank line that ended it
                out += self._decode([*block.decode("utf-8", errors="replace").split("\n"), ""])
        return out

    def close(self) -> list[bytes]:
        """Events completed by the end of the stream: none in the fast path, whose remainder
        holds no blank line (an event without its blank line is never dispatched)."""
        if self._lines is None:
            return []
        return self._decode(self._lines.close())

    def _decode(self, lines: list[str]) -> list[bytes]:
        out = []
        for line in lines:
            event = self._decoder.decode(line)
            if event is not None and event.data:
                out.append(event.data.encode())
        return out


class _Accumulator:
    """Folds one response (or a stream of chunks) into a GenerationResult."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.result = GenerationResult(ok=True)
        self._ids_from_logprobs: list[int] = []
        self._ids_from_field: list[int] = []
        self._ids_field_seen = False  # the server sent a token_ids field (possibly empty)
        self.token_texts: list[str] = []  # generated tokens given only as text (no token_id: keys)
        self.top_texts: list[dict[str, float]] = []  # their top logprobs, keyed by text
        self._text: list[str] = []  # output text pieces, joined once at the end

    def add(self, payload: dict[str, Any]) -> None:
        """Fold one response body or stream event in. A body of the wrong shape (a field of the
        wrong type) raises ValueError, so the request fails instead of the run."""
        try:
            self._add(payload)
        except (TypeError, AttributeError, KeyError, IndexError) as exc:
            raise ValueError(f"malformed response ({type(exc).__name__}: {exc})") from exc

    def _add(self, payload: dict[str, Any]) -> None:
        r = self.result
        get = payload.get
        model = get("model")
        if model.__class__ is str:
            r.served_model = model
        prompt_ids = get("prompt_token_ids")
        if prompt_ids is not None:
            r.prompt_token_ids = list(prompt_ids)
        usage = get("usage")
        if usage:
            r.prompt_tokens = usage.get("prompt_tokens", r.prompt_tokens)
            details = usage.get("prompt_tokens_details") or {}
            if details.get("cached_tokens") is not None:
                r.cached_tokens = int(details["cached_tokens"])
        chat = self.endpoint != "completions"
        for choice in get("choices") or ():
            get = choice.get
            if get("index", 0) != 0:
                continue
            text = get("text") if not chat else (get("message") or get("delta") or {}).get("content")
            if text:
                if text.__class__ is not str:
                    raise TypeError(f"text is {type(text).__name__}, not a string")
                self._text.append(text)
            prompt_ids = get("prompt_token_ids")
            if prompt_ids is not None:
                r.prompt_token_ids = list(prompt_ids)
            ids = get("token_ids")
            if ids is not None:
                self._ids_from_field += ids
                self._ids_field_seen = True
            lp = get("logprobs")
            if lp:
                if chat:
                    self._add_chat_logprobs(lp)
                else:
                    self._add_logprobs(lp)
            finish = get("finish_reason")
            if finish:
                r.finish_reason = finish

    def _add_logprobs(self, lp: dict[str, Any]) -> None:
        """/v1/completions logprobs: parallel lists of tokens, their logprobs and top dicts."""
        r = self.result
        tokens = lp.get("tokens") or ()
        logprobs = lp.get("token_logprobs") or ()
        tops = lp.get("top_logprobs") or ()
        n_values, n_tops = len(logprobs), len(tops)
        for i, tok in enumerate(tokens):
            tid = token_id_of(tok)
            if tid is not None:
                self._ids_from_logprobs.append(tid)
            value = logprobs[i] if i < n_values else None
            r.token_logprobs.append(_logprob(value) if value is not None else _NAN)
            top = (tops[i] if i < n_tops else None) or {}
            r.top_logprobs.append(_by_id(top))
            if tid is None and isinstance(tok, str):
                self.token_texts.append(tok)
                self.top_texts.append({k: _logprob(v) for k, v in top.items() if v is not None})

    def _add_chat_logprobs(self, lp: dict[str, Any]) -> None:
        """/v1/chat/completions logprobs: one entry per token, each with its top entries."""
        r = self.result
        for entry in lp.get("content") or []:
            tid = token_id_of(entry.get("token", ""))
            if tid is not None:
                self._ids_from_logprobs.append(tid)
            value = entry.get("logprob")
            r.token_logprobs.append(_logprob(value) if value is not None else _NAN)  # null: missing
            r.top_logprobs.append(_entries_by_id(entry.get("top_logprobs") or []))
            if tid is None and isinstance(entry.get("token"), str):
                self.token_texts.append(entry["token"])
                self.top_texts.append({e["token"]: _logprob(e["logprob"]) for e in entry.get("top_logprobs") or []
                                       if isinstance(e.get("token"), str) and e.get("logprob") is not None})

    def finish(self) -> GenerationResult:
        r = self.result
        r.output_text = "".join(self._text)
        r.output_token_ids = self._ids_from_field if self._ids_field_seen else self._ids_from_logprobs
        if r.output_token_ids:
            r.token_ids_source = "server"
        return r


def _aiohttp_error_as_httpx(exc: BaseException, request: httpx.Request) -> BaseException:
    """The httpx exception a given aiohttp (or httpx-aiohttp-mapped) exception stands for."""
    import aiohttp

    cause = exc.__cause__ if isinstance(exc, httpx.HTTPError) and exc.__cause__ is not None else exc
    table: list[tuple[type[BaseException], type[httpx.TransportError]]] = [
        (aiohttp.ClientConnectorError, httpx.ConnectError),
        (getattr(aiohttp, "ConnectionTimeoutError", ()), httpx.ConnectTimeout),
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


def _aiohttp_transport(limits: httpx.Limits) -> httpx.AsyncBaseTransport:
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

    return _Transport(limits=limits)


def default_transport(limits: httpx.Limits) -> httpx.AsyncBaseTransport | None:
    """The transport TargetClient uses unless given one: aiohttp's when `httpx-aiohttp` is
    installed (HARNESS_HTTP_TRANSPORT=auto, the default, or =aiohttp), else None (httpx's own)."""
    choice = os.environ.get("HARNESS_HTTP_TRANSPORT", "auto").strip().lower()
    if choice == "httpx":
        return None
    try:
        return _aiohttp_transport(limits)
    except ImportError:
        if choice == "aiohttp":
            raise
        return None


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
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # keepalive=False gives every request its own connection, so a server that drops a
        # connection after an error cannot make the *next* request fail in its place.
        limits = httpx.Limits(max_connections=max_connections,
                              max_keepalive_connections=max_connections if keepalive else 0)
        self._text_ids: dict[str, int | None] = {}  # token text -> id, via /extras/tokenize
        self._tokenize_endpoint: bool | None = None  # None: not tried yet
        # Without keep-alive, httpx's own transport: it honours "no connection reuse", which
        # aiohttp's pool does not, and hostile traffic is no throughput path.
        chosen = transport if transport is not None else (default_transport(limits) if keepalive else None)
        self._http = _Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s)),
            headers=headers,
            limits=limits,
            transport=chosen,
        )
        # After a stream's [DONE]: read on to its end over aiohttp (leaving httpx's stream
        # generators suspended costs their finalisation through the event loop); over httpx's
        # own transport stop there as before, which closes the connection: httpcore's pool costs
        # more CPU per request with many connections to reuse than a new connection does.
        over_aiohttp = sys.modules.get("httpx_aiohttp")  # loaded wherever its transport is in use
        self._drain_after_done = over_aiohttp is not None and isinstance(chosen, over_aiohttp.AiohttpTransport)

        self._urls: dict[str, httpx.URL] = {}
        defaults = dict(self._http.headers)
        self._json_headers = {**defaults, "Content-Type": "application/json"}  # bodies: fastjson
        self._sse_headers = {**self._json_headers, "Accept": "text/event-stream"}
        self._extensions = {"timeout": self._http.timeout.as_dict()}

    async def __aenter__(self) -> "TargetClient":
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
        return httpx.Request("POST", self._url(req.path), content=fastjson.dumps(req.body()),
                             headers={**base, **req.headers} if req.headers else base,
                             extensions=self._extensions)

    async def generate(self, req: GenerationRequest) -> GenerationResult:
        """Send one request; every failure comes back as a result with ok=False."""
        acc = _Accumulator(req.endpoint)
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
            await self._recover_ids(req, acc, result)
        if not result.output_token_ids and result.finish_reason is None:
            result.ok = False
            result.error = result.error or "response carried no choice"
        return result

    async def _read_stream(self, resp: httpx.Response, acc: _Accumulator, start: float) -> None:
        """Read an SSE stream from the raw bytes (`_SSEData`; httpx's text and line decoders
        under httpx-sse cost more CPU than the rest of the request)."""
        events, done = _SSEData(), False
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
    def _on_events(datas: list[bytes], acc: _Accumulator, start: float) -> bool:
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

    # --- token ids from text (servers that key logprobs by text) -------------------------------

    async def tokenize(self, model: str | None, text: str) -> list[int] | None:
        """The server's own tokenization of `text` via POST /extras/tokenize (None: not offered)."""
        if self._tokenize_endpoint is False:
            return None
        try:
            resp = await self._http.post("/extras/tokenize", json={"model": model, "input": text})
        except httpx.HTTPError:
            return None
        if resp.status_code in (404, 405):
            self._tokenize_endpoint = False
            return None
        try:
            tokens = resp.json().get("tokens") if resp.status_code == 200 else None
        except (ValueError, AttributeError):
            tokens = None
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            return None
        self._tokenize_endpoint = True
        return tokens

    async def _text_id(self, model: str | None, text: str) -> int | None:
        if text not in self._text_ids:
            ids = await self.tokenize(model, text) if text else None
            self._text_ids[text] = ids[0] if ids is not None and len(ids) == 1 else None
        return self._text_ids[text]

    async def _recover_ids(self, req: GenerationRequest, acc: _Accumulator, result: GenerationResult) -> None:
        """Map each generated token's text to one id; else tokenize the whole output text."""
        model = req.model or result.served_model  # llama.cpp answers with its file path as model
        ids = [await self._text_id(model, t) for t in acc.token_texts]
        if acc.token_texts and all(i is not None for i in ids) and "".join(acc.token_texts) == result.output_text:
            result.output_token_ids = [i for i in ids if i is not None]
            result.token_ids_source = "tokenize"
            tops: list[dict[int, float]] = []
            for top in acc.top_texts:
                mapped: dict[int, float] = {}
                for text, lp in top.items():
                    tid = await self._text_id(model, text)
                    if tid is not None:
                        mapped[tid] = lp
                tops.append(mapped)
            if len(tops) == len(result.top_logprobs):
                result.top_logprobs = tops
            return
        whole = await self.tokenize(model, result.output_text) if result.output_text else None
        if whole:
            result.output_token_ids = whole
            result.token_ids_source = "tokenize-text"

    # --- server-level endpoints -------------------------------------------------------------

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

    async def reset_prefix_cache(self) -> bool:
        """Ask the server to drop its prefix cache; True when it said yes."""
        try:
            resp = await self._http.post("/reset_prefix_cache")
        except httpx.HTTPError:
            return False
        return resp.status_code == 200


def _excerpt(data: bytes) -> str:
    return data[:500].decode("utf-8", errors="replace")


def _failed(status: int | None, error: str, start: float) -> GenerationResult:
    return GenerationResult(ok=False, status=status, error=error[:2000], latency_s=time.perf_counter() - start)
