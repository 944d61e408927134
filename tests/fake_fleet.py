"""The tests' fake fleet: replicas of bench/fake_server.py behind a tiny prefix-aware router, as a
`Stack`, so the fleet's checks can be shown to FAIL and PASS without starting vLLM.

The router does what vllm-router's cache_aware policy was measured to do (README, "A fleet under
test"): it keys its prefix index on the prompt text alone, ignoring the cache salt, and sends a
prompt to the replica that served the longest prefix of it (round-robin when none shares
`MIN_SHARED_WORDS`). That steering is no leak while each replica keeps salted domains apart. It
records which replica served each `X-Harness-Op`, and `events()` hands that over as the
`ReplicaAttribution` a real fleet reads from its replicas' ledgers (`stacks.fleet`).

Two faults of a fleet, by construction:
- `forget_salt`: the router strips `cache_salt` before forwarding (a salt forgotten between the
  router and the replicas);
- `tier="shared-unsalted"`: the replicas share one KV-cache tier that keys blocks without the
  salt (the class of LMCache's shared tier ignoring it), so a replica serves blocks another
  replica computed for another tenant.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Coroutine
from typing import Any, ClassVar, Literal

import aiohttp
from aiohttp import web

from bench.fake_server import MODEL, FakeServer, PrefixCache
from harness.history.record import Event, ReplicaAttribution
from harness.stacks.base import StackTraits
from harness.stacks.process import LaunchError, free_port, history_time, restart_incident
from harness.stacks.replica_tag import OP_HEADER, REPLICA_HEADER

MIN_SHARED_WORDS = 8
"""Leading words a prompt must share with one a replica served for the router to follow it there."""

Policy = Literal["prefix", "round_robin"]
Tier = Literal["per-replica", "shared-unsalted"]


class UnsaltedCache(PrefixCache):
    """A KV-cache tier that keys blocks on the model and tokens only: every salt shares it."""

    def _hashes(self, domain: tuple[str, str | None], ids: list[int], start: int = 0) -> list[int]:
        return super()._hashes((domain[0], None), ids, start)


def _common_words(a: list[str], b: list[str]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _prompt_words(body: dict[str, Any]) -> list[str]:
    """The prompt as words, as the router's prefix index sees it (the salt is not part of it)."""
    if "messages" in body:
        return " ".join(str(m.get("content") or "") for m in body["messages"] if isinstance(m, dict)).split()
    prompt = body.get("prompt") or ""
    return (prompt if isinstance(prompt, str) else " ".join(map(str, prompt))).split()


class FakeRouter:
    """The router's app: generation requests to one replica, control requests to all of them."""

    def __init__(self, replica_urls: list[str], policy: Policy, forget_salt: bool) -> None:
        self.urls = replica_urls
        self.policy: Policy = policy
        self.forget_salt = forget_salt
        self.index: list[tuple[int, list[str]]] = []  # (replica, prompt words) in routing order
        self.served: dict[str, list[int]] = {}  # op id -> replicas it was sent to
        self.turn = 0
        self.session: aiohttp.ClientSession | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/completions", self.generate)
        app.router.add_post("/v1/chat/completions", self.generate)
        app.router.add_post("/reset_prefix_cache", self.to_all)
        app.router.add_route("*", "/{tail:.*}", self.to_first)
        app.on_cleanup.append(self._close)
        return app

    async def _close(self, app: web.Application) -> None:
        if self.session is not None:
            await self.session.close()

    def route(self, words: list[str]) -> int:
        """The replica for a prompt: the one that served the longest shared prefix, else the next in turn."""
        if self.policy == "prefix":
            best, shared = None, MIN_SHARED_WORDS - 1
            for replica, seen in reversed(self.index):
                n = _common_words(words, seen)
                if n > shared:
                    best, shared = replica, n
            if best is not None:
                return best
        self.turn = (self.turn + 1) % len(self.urls)
        return self.turn

    async def _forward(self, url: str, request: web.Request, data: bytes) -> web.Response:
        if self.session is None:
            self.session = aiohttp.ClientSession()
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", OP_HEADER)}
        async with self.session.request(request.method, url + request.path_qs, data=data, headers=headers) as resp:
            body = await resp.read()
            out = {"Content-Type": resp.headers.get("Content-Type", "application/json")}
            return web.Response(status=resp.status, body=body, headers=out)

    async def generate(self, request: web.Request) -> web.Response:
        raw = await request.read()
        body = json.loads(raw)
        words = _prompt_words(body)
        replica = self.route(words)
        self.index.append((replica, words))
        op = request.headers.get(OP_HEADER)
        if op is not None:
            self.served.setdefault(op, []).append(replica)
        if self.forget_salt and "cache_salt" in body:
            del body["cache_salt"]
            raw = json.dumps(body).encode()
        resp = await self._forward(self.urls[replica], request, raw)
        resp.headers[REPLICA_HEADER] = f"r{replica}"
        return resp

    async def to_all(self, request: web.Request) -> web.Response:
        raw = await request.read()
        answers = [await self._forward(url, request, raw) for url in self.urls]
        return next((a for a in answers if a.status != 200), answers[0])

    async def to_first(self, request: web.Request) -> web.Response:
        return await self._forward(self.urls[0], request, await request.read())


class FakeFleet:
    """A `Stack`: `replicas` fake servers and the fake router, served from one event loop in a
    background thread of the test process."""

    NAME: ClassVar[str] = "fake fleet"

    def __init__(self, replicas: int = 2, *, policy: Policy = "prefix", forget_salt: bool = False,
                 tier: Tier = "per-replica", block_size: int = 4, models: tuple[str, ...] = (MODEL,)) -> None:
        self.size, self.policy, self.forget_salt, self.tier = replicas, policy, forget_salt, tier
        self.block_size, self.models = block_size, models
        self.servers: list[FakeServer] = []
        self.router: FakeRouter | None = None
        self.startup_s: float | None = None
        self.restarts = 0
        self._url: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runners: list[web.AppRunner] = []
        self._ports: list[int] = []
        self._reported: dict[str, int] = {}
        self._events: list[Event] = []

    # --- the Stack protocol -------------------------------------------------------------------

    @property
    def traits(self) -> StackTraits:
        return StackTraits(owned=True, can_restart=True, replicas=self.size)

    @property
    def base_url(self) -> str:
        if self._url is None:
            raise LaunchError(f"{self.NAME} is not started")
        return self._url

    def start(self) -> str:
        if self._url is not None:
            return self._url
        loop = self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="fake-fleet", daemon=True)
        self._thread.start()
        self.servers = [FakeServer(None, self.block_size, self.models) for _ in range(self.size)]
        if self.tier == "shared-unsalted":
            shared = UnsaltedCache(self.block_size)
            for s in self.servers:
                s.cache = shared
        # The same ports on every start: a restarted fleet answers where the old one did.
        self._ports = self._ports or [free_port() for _ in range(self.size + 1)]
        *ports, port = self._ports
        for server, replica_port in zip(self.servers, ports, strict=True):
            self._call(self._serve(server.app(), replica_port))
        self.router = FakeRouter([f"http://127.0.0.1:{p}" for p in ports], self.policy, self.forget_salt)
        self._call(self._serve(self.router.app(), port))
        self._url = f"http://127.0.0.1:{port}"
        return self._url

    def stop(self) -> None:
        loop, thread, runners = self._loop, self._thread, self._runners
        self._loop, self._thread, self._runners, self._url = None, None, [], None
        if loop is None:
            return
        try:
            for runner in reversed(runners):
                asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            if thread is not None:
                thread.join(30)
            loop.close()

    def restart(self) -> str:
        """A fresh fleet: every replica's cache and the router's index start empty."""
        self._events.append(self._attribution())  # what the old router attributed, before it goes
        self.stop()
        self.restarts += 1
        self._reported = {}
        self._events.append(restart_incident(self.NAME, self.restarts))
        return self.start()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def check_alive(self) -> None:
        if self._url is not None and not self.alive:
            raise LaunchError(f"{self.NAME} at {self._url} has died")

    def events(self) -> list[Event]:
        """Restarts, then which replica served each op the router forwarded since the last call."""
        out, self._events = [*self._events, self._attribution()], []
        return out

    def _attribution(self) -> ReplicaAttribution:
        """Like the replicas' ledgers: only what was forwarded since the last call."""
        served = dict(self.router.served) if self.router is not None else {}
        new = {op: rs[self._reported.get(op, 0):] for op, rs in served.items() if len(rs) > self._reported.get(op, 0)}
        self._reported.update({op: len(rs) for op, rs in served.items()})
        return ReplicaAttribution(
            at_s=history_time(), replicas=[f"r{i}" for i in range(self.size)],
            served={op: f"r{rs[0]}" for op, rs in new.items() if len(set(rs)) == 1},
            ambiguous=sorted(op for op, rs in new.items() if len(set(rs)) > 1), source="fake router")

    def __enter__(self) -> FakeFleet:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- plumbing -----------------------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    async def _serve(self, app: web.Application, port: int) -> None:
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        self._runners.append(runner)


__all__ = ["FakeFleet", "FakeRouter", "UnsaltedCache"]
