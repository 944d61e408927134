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

Transport: httpx's API throughout, over aiohttp (the `httpx-aiohttp` package) when it is
installed, which costs several times less CPU per request than httpx's own transport (see
bench/README.md); aiohttp's errors are mapped onto httpx's, so failures read as before. Set
`HARNESS_HTTP_TRANSPORT=httpx` to force httpx's own transport (`aiohttp` to require the other).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
from httpx_sse import aconnect_sse

Endpoint = Literal["completions", "chat"]
_TOKEN_ID_RE = re.compile(r"^token_id:(-?\d+)$")


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


def _token_id(token: str) -> int | None:
    m = _TOKEN_ID_RE.match(token)
    return int(m.group(1)) if m else None


class _Accumulator:
    """Folds one response (or a stream of chunks) into a GenerationResult."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.result = GenerationResult(ok=True)
        self._ids_from_logprobs: list[int] = []
        self._ids_from_field: list[int] | None = None
        self.token_texts: list[str] = []  # generated tokens given only as text (no token_id: keys)
        self.top_texts: list[dict[str, float]] = []  # their top logprobs, keyed by text

    def add(self, payload: dict[str, Any]) -> None:
        r = self.result
        if isinstance(payload.get("model"), str):
            r.served_model = payload["model"]
        if payload.get("prompt_token_ids") is not None:
            r.prompt_token_ids = list(payload["prompt_token_ids"])
        usage = payload.get("usage")
        if usage:
            r.prompt_tokens = usage.get("prompt_tokens", r.prompt_tokens)
            details = usage.get("prompt_tokens_details") or {}
            if details.get("cached_tokens") is not None:
                r.cached_tokens = int(details["cached_tokens"])
        for choice in payload.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            if self.endpoint == "completions":
                r.output_text += choice.get("text") or ""
            else:
                part = choice.get("message") or choice.get("delta") or {}
                r.output_text += part.get("content") or ""
            if choice.get("prompt_token_ids") is not None:
                r.prompt_token_ids = list(choice["prompt_token_ids"])
            if choice.get("token_ids") is not None:
                self._ids_from_field = (self._ids_from_field or []) + list(choice["token_ids"])
            self._add_logprobs(choice.get("logprobs"))
            if choice.get("finish_reason"):
                r.finish_reason = choice["finish_reason"]

    def _add_logprobs(self, lp: dict[str, Any] | None) -> None:
        if not lp:
            return
        r = self.result
        if self.endpoint == "completions":
            tokens = lp.get("tokens") or []
            for i, tok in enumerate(tokens):
                tid = _token_id(tok)
                if tid is not None:
                    self._ids_from_logprobs.append(tid)
                logprobs = lp.get("token_logprobs") or []
                r.token_logprobs.append(float(logprobs[i]) if i < len(logprobs) and logprobs[i] is not None else float("nan"))
                tops = (lp.get("top_logprobs") or [])
                top = tops[i] if i < len(tops) and tops[i] else {}
                r.top_logprobs.append({t: float(v) for k, v in top.items() if (t := _token_id(k)) is not None})
                if tid is None and isinstance(tok, str):
                    self.token_texts.append(tok)
                    self.top_texts.append({k: float(v) for k, v in top.items() if v is not None})
        else:
            for entry in lp.get("content") or []:
                tid = _token_id(entry.get("token", ""))
                if tid is not None:
                    self._ids_from_logprobs.append(tid)
                r.token_logprobs.append(float(entry.get("logprob", float("nan"))))
                r.top_logprobs.append(
                    {t: float(e["logprob"]) for e in entry.get("top_logprobs") or [] if (t := _token_id(e.get("token", ""))) is not None}
                )
                if tid is None and isinstance(entry.get("token"), str):
                    self.token_texts.append(entry["token"])
                    self.top_texts.append({e["token"]: float(e["logprob"]) for e in entry.get("top_logprobs") or []
                                           if isinstance(e.get("token"), str) and e.get("logprob") is not None})

    def finish(self) -> GenerationResult:
        r = self.result
        r.output_token_ids = self._ids_from_field if self._ids_from_field is not None else self._ids_from_logprobs
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
    """httpx-aiohttp's transport, with every aiohttp error raised as the matching httpx error."""
    from httpx_aiohttp import AiohttpTransport

    class _Stream(httpx.AsyncByteStream):
        def __init__(self, inner: httpx.AsyncByteStream, request: httpx.Request) -> None:
            self._inner, self._request = inner, request

        async def __aiter__(self) -> AsyncIterator[bytes]:
            try:
                async for chunk in self._inner:
                    yield chunk
            except Exception as exc:
                mapped = _aiohttp_error_as_httpx(exc, self._request)
                if mapped is exc:
                    raise
                raise mapped from exc

        async def aclose(self) -> None:
            await self._inner.aclose()

    class _Transport(AiohttpTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            try:
                response = await super().handle_async_request(request)
            except Exception as exc:
                mapped = _aiohttp_error_as_httpx(exc, request)
                if mapped is exc:
                    raise
                raise mapped from exc
            response.stream = _Stream(response.stream, request)  # type: ignore[arg-type]
            return response

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
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # keepalive=False gives every request its own connection, so a server that drops a
        # connection after an error cannot make the *next* request fail in its place.
        limits = httpx.Limits(max_connections=max_connections,
                              max_keepalive_connections=max_connections if keepalive else 0)
        self._text_ids: dict[str, int | None] = {}  # token text -> id, via /extras/tokenize
        self._tokenize_endpoint: bool | None = None  # None: not tried yet
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s)),
            headers=headers,
            limits=limits,
            # Without keep-alive, httpx's own transport: it honours "no connection reuse", which
            # aiohttp's pool does not, and hostile traffic is no throughput path.
            transport=transport if transport is not None else (default_transport(limits) if keepalive else None),
        )

    async def __aenter__(self) -> "TargetClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def generate(self, req: GenerationRequest) -> GenerationResult:
        """Send one request; every failure comes back as a result with ok=False."""
        acc = _Accumulator(req.endpoint)
        start = time.perf_counter()
        try:
            if req.stream:
                await self._generate_stream(req, acc, start)
            else:
                resp = await self._http.post(req.path, json=req.body(), headers=req.headers)
                acc.result.status = resp.status_code
                if resp.status_code != 200:
                    return _failed(resp.status_code, resp.text, start)
                acc.add(resp.json())
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

    async def _generate_stream(self, req: GenerationRequest, acc: _Accumulator, start: float) -> None:
        async with aconnect_sse(self._http, "POST", req.path, json=req.body(), headers=req.headers) as source:
            resp = source.response
            acc.result.status = resp.status_code
            if resp.status_code != 200:
                body = (await resp.aread()).decode(errors="replace")
                raise httpx.HTTPStatusError(f"HTTP {resp.status_code}: {body}", request=resp.request, response=resp)
            done = False
            async for event in source.aiter_sse():
                if event.data.strip() == "[DONE]":
                    done = True
                    break
                payload = json.loads(event.data)
                if "error" in payload and not payload.get("choices"):
                    raise ValueError(f"error event in stream: {event.data[:500]}")
                if acc.result.ttft_s is None and any(
                    (c.get("text") or (c.get("delta") or {}).get("content") or c.get("token_ids"))
                    for c in payload.get("choices") or []
                ):
                    acc.result.ttft_s = time.perf_counter() - start
                acc.add(payload)
            if not done:
                raise httpx.RemoteProtocolError("stream ended without [DONE]")

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


def _failed(status: int | None, error: str, start: float) -> GenerationResult:
    return GenerationResult(ok=False, status=status, error=error[:2000], latency_s=time.perf_counter() - start)
