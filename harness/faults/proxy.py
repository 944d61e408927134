"""A fault-injecting reverse proxy for any OpenAI-compatible server (the harness's nemesis).

`FaultProxy` forwards every path to the target and, on POST /v1/completions and
/v1/chat/completions, injects one registered fault (`harness.faults.base.Fault`) with probability
`rate` (seeded). The proxy is plumbing only: the reverse proxy, capturing a response, and calling
the fault's hooks; what a fault does lives in its own module. It exists so that each harness
check can be shown to FAIL on a server that really breaks isolation, and to PASS under benign
perturbations.

With no fault the proxy is transparent: the request bytes go upstream unchanged and the response
bytes come back unchanged, streams are relayed chunk by chunk without buffering. Faults that alter
a response buffer the upstream response (a stream is collected whole), edit the parsed JSON and
re-emit it (as SSE for a stream). Errors are passed through: an upstream status and body as they
came, a broken upstream stream as a broken downstream stream (the connection is closed without
the final `data: [DONE]`), an unreachable upstream as 502, a silent one as 504 after `timeout_s`.

The proxy runs its own event loop in a background thread, so sync code, async code in another
loop, and tests can all use it the same way:

    with FaultProxy("http://127.0.0.1:8000", fault="flip", rate=0.5, seed=1) as proxy:
        ...  # send traffic to proxy.url
        print(len(proxy.injections), proxy.injections[0].seq)

Identity comes from the driver's headers `X-Harness-User`, `X-Harness-Tenant` and `X-Harness-Op`;
without them a request's user is a hash of its prompt and its tenant its cache salt or user.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import threading
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from harness.faults.base import Fault, get
from harness.faults.exchange import SSE_TYPE, Call, Captured, parse_captured, render
from harness.faults.injections import Injection, InjectionLog
from harness.faults.prompts import prompt_text
from harness.faults.tokenizer import TargetTokenizer
from harness.history.record import FaultInjection

GENERATION_PATHS: dict[str, str] = {"/v1/completions": "completions", "/v1/chat/completions": "chat"}
USER_HEADER = "X-Harness-User"
TENANT_HEADER = "X-Harness-Tenant"
OP_HEADER = "X-Harness-Op"
DEFAULT_TIMEOUT_S = 120.0

_HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers",
        "transfer-encoding", "upgrade", "host", "content-length", "content-encoding", "accept-encoding",
    )
)


class FaultProxy:
    """A reverse proxy in front of `target_url` that injects `fault` (None: transparent).

    Use as a context manager (sync or async) or call `start()` / `stop()`; `url` is where it
    listens, `injections` what it has done. `rate` is the probability that a request eligible for
    the fault gets it; `seed` seeds that choice and every other random choice of the faults.
    """

    def __init__(
        self,
        target_url: str,
        fault: str | None = None,
        rate: float = 1.0,
        seed: int = 0,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        swap_window_s: float | None = None,
        on_injection: Callable[[Injection], None] | None = None,
    ) -> None:
        if fault is not None and fault.lower() == "none":
            fault = None
        fault_type = get(fault) if fault is not None else None
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must be in [0, 1], got {rate}")
        self.target_url = target_url.rstrip("/")
        self.fault = fault
        self.rate = rate
        self.seed = seed
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self.swap_window_s = swap_window_s
        """How long `swap` waits for a partner (None: the fault's own default)."""
        self.on_injection = on_injection
        self.injections = InjectionLog()
        self.requests_seen = 0
        """Generation requests seen so far (the `seq` of the latest)."""
        self.url = ""
        self._rng = random.Random(seed)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tokenizer: TargetTokenizer | None = None
        self._fault: Fault | None = fault_type(self) if fault_type is not None else None

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> str:
        """Start serving in a background thread; returns the URL once it accepts connections."""
        if self._thread is not None:
            return self.url
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._astart())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._astop())
                loop.close()

        self._thread = threading.Thread(target=run, name=f"fault-proxy-{self.fault}", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]
        return self.url

    @property
    def running(self) -> bool:
        """Started and not stopped."""
        return self._thread is not None

    def stop(self) -> None:
        """Stop serving and join the thread (in-flight requests are cut off)."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        self._thread = None
        self._loop = None

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> FaultProxy:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)

    async def _astart(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            auto_decompress=True,
            timeout=self._timeout(),
        )
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        self.url = f"http://{self.host}:{self.port}"
        self._tokenizer = TargetTokenizer(self._session, self.target_url, self.timeout_s)

    async def _astop(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in rest:
            t.cancel()
        if rest:
            await asyncio.wait(rest, timeout=5.0)

    def _timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=None, connect=min(10.0, self.timeout_s), sock_read=self.timeout_s)

    # --- what the fault's hooks use (harness.faults.base.FaultContext) -----------------------------

    @property
    def rng(self) -> random.Random:
        return self._rng

    @property
    def tokenizer(self) -> TargetTokenizer:
        assert self._tokenizer is not None, "the proxy is not started"
        return self._tokenizer

    def draw(self) -> bool:
        """One seeded coin flip for an eligible request."""
        return self.rate >= 1.0 or self._rng.random() < self.rate

    def record(self, call: Call, detail: str) -> None:
        inj = Injection(call.seq, call.op, call.user, call.tenant, self.fault or "", detail, call.request.path)
        self.injections.append(inj)
        if self.on_injection is not None:
            with contextlib.suppress(Exception):  # a reporting callback must not break the proxy
                self.on_injection(inj)

    def retarget(self, target_url: str) -> None:
        """Forward to `target_url` from now on (the stack behind restarted elsewhere); the fault's
        state and the injections so far are kept."""
        self.target_url = target_url.rstrip("/")
        if self._session is not None:
            self._tokenizer = TargetTokenizer(self._session, self.target_url, self.timeout_s)

    def records(self) -> list[FaultInjection]:
        """Every injection so far, as history records."""
        return [inj.to_record() for inj in self.injections]

    def _classify(self, request: web.Request, raw: bytes) -> Call:
        call = Call(request, raw)
        endpoint = GENERATION_PATHS.get(request.path.rstrip("/"))
        if request.method != "POST" or endpoint is None:
            return call
        try:
            body = json.loads(raw)
        except ValueError:
            return call
        if not isinstance(body, dict):
            return call
        call.endpoint, call.body = endpoint, body
        self.requests_seen += 1
        call.seq = self.requests_seen
        text = prompt_text(body, endpoint)
        ident = text if text is not None else json.dumps(body.get("prompt", body.get("messages")), sort_keys=True)
        call.user = request.headers.get(USER_HEADER) or "prompt:" + hashlib.sha1(ident.encode()).hexdigest()[:12]
        salt = body.get("cache_salt")
        call.tenant = request.headers.get(TENANT_HEADER) or (f"salt:{salt}" if isinstance(salt, str) else call.user)
        call.op = request.headers.get(OP_HEADER)
        return call

    # --- upstream ----------------------------------------------------------------------------------

    @staticmethod
    def _upstream_headers(request: web.Request) -> CIMultiDict[str]:
        return CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP)

    @staticmethod
    def _downstream_headers(up: aiohttp.ClientResponse) -> list[tuple[str, str]]:
        return [(k, v) for k, v in up.headers.items() if k.lower() not in _HOP_BY_HOP]

    def _send(self, call: Call) -> Any:
        assert self._session is not None
        return self._session.request(
            call.request.method,
            self.target_url + call.request.path_qs,
            headers=self._upstream_headers(call.request),
            data=call.data() if call.raw or call.body_changed else None,
            allow_redirects=False,
        )

    @staticmethod
    def _error(status: int, message: str) -> web.Response:
        body = {"error": {"message": message, "type": "proxy_error", "code": status}, "object": "error"}
        return web.json_response(body, status=status)

    async def _passthrough(self, call: Call) -> web.StreamResponse:
        """Relay the request and response; streams chunk by chunk, nothing buffered."""
        try:
            async with self._send(call) as up:
                headers = self._downstream_headers(up)
                if SSE_TYPE not in up.headers.get("Content-Type", ""):
                    try:
                        body = await up.read()
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        return self._error(502, f"upstream body broke off: {type(exc).__name__}: {exc}")
                    return web.Response(status=up.status, reason=up.reason, headers=headers, body=body)
                resp = web.StreamResponse(status=up.status, reason=up.reason, headers=headers)
                await resp.prepare(call.request)
                chunks = up.content.iter_any()
                while True:
                    try:
                        chunk = await chunks.__anext__()
                    except StopAsyncIteration:
                        break
                    except (aiohttp.ClientError, TimeoutError):
                        _abort(call.request)  # upstream broke off: so does the downstream stream
                        return resp
                    try:
                        await resp.write(chunk)
                    except (ConnectionError, aiohttp.ClientConnectionResetError):
                        return resp  # the client left; leaving the block closes the upstream too
                await resp.write_eof()
                return resp
        except TimeoutError:
            return self._error(504, f"upstream {self.target_url} did not answer within {self.timeout_s:g} s")
        except aiohttp.ClientError as exc:
            return self._error(502, f"upstream {self.target_url} failed: {type(exc).__name__}: {exc}")

    async def _capture(self, call: Call) -> Captured | web.Response:
        """Read the whole upstream response; an error response of our own when there is none."""
        try:
            async with self._send(call) as up:
                sse = SSE_TYPE in up.headers.get("Content-Type", "")
                cap = Captured(up.status, up.reason, self._downstream_headers(up), b"", sse)
                parts: list[bytes] = []
                try:
                    async for chunk in up.content.iter_any():
                        parts.append(chunk)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    cap.broken = f"{type(exc).__name__}: {exc}"
                cap.raw = b"".join(parts)
        except TimeoutError:
            return self._error(504, f"upstream {self.target_url} did not answer within {self.timeout_s:g} s")
        except aiohttp.ClientError as exc:
            return self._error(502, f"upstream {self.target_url} failed: {type(exc).__name__}: {exc}")
        if cap.broken is not None and not cap.sse:
            return self._error(502, f"upstream body broke off: {cap.broken}")
        parse_captured(cap)
        return cap

    async def _emit(self, call: Call, cap: Captured) -> web.StreamResponse:
        """Send a captured (maybe edited) response downstream; a broken one ends broken."""
        body = render(cap) if cap.modified else cap.raw
        if not cap.sse:
            return web.Response(status=cap.status, reason=cap.reason, headers=cap.headers, body=body)
        resp = web.StreamResponse(status=cap.status, reason=cap.reason, headers=cap.headers)
        try:
            await resp.prepare(call.request)
            await resp.write(body)
            if cap.broken is not None:
                _abort(call.request)
                return resp
            await resp.write_eof()
        except (ConnectionError, aiohttp.ClientConnectionResetError):
            pass
        return resp

    # --- the handler ---------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        call = self._classify(request, raw)
        fault = self._fault
        if fault is None or call.endpoint is None or call.body is None:
            return await self._passthrough(call)
        answer = await fault.on_request(call)
        if answer is not None:
            return await self._emit(call, answer)
        if not fault.edits_response:
            return await self._passthrough(call)
        answered = False
        try:
            result = await self._capture(call)
            if isinstance(result, web.Response):
                return result
            edited = await fault.on_response(call, result)
            answered = True
        finally:
            if not answered:  # cancelled (the client left) or the upstream failed
                fault.on_abandoned(call)
        return await self._emit(call, edited)


def _abort(request: web.Request) -> None:
    """Close the downstream connection without ending the chunked body, so the client sees the break."""
    if request.transport is not None:
        request.transport.close()
