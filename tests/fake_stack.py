"""The tests' one fake stack: `bench.fake_server` (an OpenAI-compatible server with a real
block-level prefix cache per (model, cache salt) domain) behind the `Stack` protocol.

`FakeStack(mode="thread")` serves the app on a loopback port from an event loop in a background
thread of the test process, so a test can look at (or reset) `stack.server.cache` directly;
`mode="process"` runs `python -m bench.fake_server` as a child process, which a test may kill to
see a server die. Either way `restart()` gives a fresh server with an empty cache, as an owned
stack's restart does, and records it as an `Incident`, as `stacks.process.OwnedProcess` does.

Token model (see bench/fake_server.py): a harness pool word is one token id, outputs are a
deterministic function of the prompt, and cached-token counts are whole blocks of a prefix that an
earlier request of the same domain saw (never the whole prompt). `tokenize` and `generate` below
are the server's own, so a test can predict exactly what the client should read back.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ClassVar, Literal

from aiohttp import web

from bench.fake_server import MODEL, FakeServer, SpawnedServer, chat_ids, generate, tokenize
from harness.history.record import Event
from harness.stacks.base import StackTraits
from harness.stacks.process import LaunchError, free_port, restart_incident

__all__ = ["MODEL", "FakeStack", "chat_ids", "generate", "tokenize"]

Mode = Literal["thread", "process"]


class _LoopThread:
    """An asyncio loop in a daemon thread serving one aiohttp app; `call` runs a coroutine on it."""

    def __init__(self, app: web.Application, port: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=f"fake-stack-{port}", daemon=True)
        self.thread.start()
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        self.call(self._serve(port))

    async def _serve(self, port: int) -> None:
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()

    def call(self, coro: Coroutine[Any, Any, None], timeout_s: float = 30.0) -> None:
        asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def close(self) -> None:
        try:
            self.call(self.runner.cleanup())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(30)
            self.loop.close()


def _answer(doc: Any) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(_: web.Request) -> web.Response:
        return web.json_response(doc)
    return handler


class FakeStack:
    """A `Stack` over bench/fake_server.py. `server` is the live `FakeServer` in thread mode."""

    NAME: ClassVar[str] = "fake server"

    def __init__(self, mode: Mode = "thread", *, block_size: int = 4, tokens: int | None = None,
                 models: tuple[str, ...] = (MODEL,), documents: dict[str, Any] | None = None,
                 service_s: float = 0.0) -> None:
        self.mode: Mode = mode
        self.block_size, self.tokens, self.models = block_size, tokens, models
        self.service_s = service_s
        """The fake's engine step (thread mode only; `FakeServer.service_s`)."""
        self.documents = dict(documents or {})
        """JSON answered to GET at these paths beside the fake's own (e.g. /openapi.json, /version:
        the fake dressed as a given server); thread mode only."""
        self.server: FakeServer | None = None
        self.startup_s: float | None = None
        self.restarts = 0
        self._url: str | None = None
        self._loop: _LoopThread | None = None
        self._proc: SpawnedServer | None = None
        self._events: list[Event] = []

    @property
    def traits(self) -> StackTraits:
        return StackTraits(owned=True, can_restart=True)

    @property
    def base_url(self) -> str:
        if self._url is None:
            raise LaunchError(f"{self.NAME} is not started")
        return self._url

    def start(self) -> str:
        if self._url is not None:
            return self._url
        port = free_port()
        if self.mode == "thread":
            self.server = FakeServer(self.tokens, self.block_size, self.models, self.service_s)
            app = self.server.app()
            for path, doc in self.documents.items():
                app.router.add_get(path, _answer(doc))
            self._loop = _LoopThread(app, port)
        else:
            assert not self.documents, "documents are served in thread mode only"
            self._proc = FakeServer.spawn(port, self.tokens, self.block_size)
        self._url = f"http://127.0.0.1:{port}"
        return self._url

    def stop(self) -> None:
        loop, proc = self._loop, self._proc
        self._loop = self._proc = None
        self._url = None
        if loop is not None:
            loop.close()
        if proc is not None:
            proc.stop()

    def restart(self) -> str:
        self.stop()
        self.restarts += 1
        self._events.append(restart_incident(self.NAME, self.restarts))
        return self.start()

    @property
    def alive(self) -> bool:
        if self._loop is not None:
            return self._loop.thread.is_alive()
        if self._proc is not None:
            return self._proc.proc.poll() is None
        return False

    def check_alive(self) -> None:
        if self._url is not None and not self.alive:
            raise LaunchError(f"{self.NAME} at {self._url} has died")

    def events(self) -> list[Event]:
        out, self._events = self._events, []
        return out

    def __enter__(self) -> FakeStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

