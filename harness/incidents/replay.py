"""Replaying recorded requests: fire a group concurrently, exactly as recorded, and see whether
the failure comes back (a request gets no answer or a 5xx, or the server stops answering).

Each replayed request carries the body and the request's own headers the history recorded, the
connection's credentials (its tenant's own where it has them) and the harness's identity headers
(`X-Harness-User`, `X-Harness-Tenant`, `X-Harness-Op` with the original op id), so a server or
proxy sees the same traffic as in the run. Before each replay the server must be up: an owned
stack that died is restarted (a fresh process); a URL is waited for, bounded, and never touched
otherwise. A replay is never an operation of the history: it is recorded as a `TriageReplay`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field

import httpx

from harness.client.connection import current
from harness.history.record import Operation
from harness.incidents.detect import is_broken
from harness.stacks.base import Stack

PATHS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}
HEALTH_PATH = "/v1/models"
WAIT_FOR_URL_S = 60.0
"""How long a URL the harness does not own may take to answer again before a replay."""
POLL_S = 1.0


class ServerGone(RuntimeError):
    """The server did not come back (a URL that stays down, an owned stack that cannot restart)."""


@dataclass(frozen=True)
class Outcome:
    """One request's replay: its status (None: no answer) and whether it failed."""

    op_id: str
    status: int | None
    broken: bool
    error: str = ""


def truncated(op: Operation) -> bool:
    """The history shortened a long string of this request's body (`...(N chars)`): a replay is
    then not the exact request."""
    return any(isinstance(v, str) and v.endswith(" chars)") and "...(" in v for v in op.request.values())


async def send(client: httpx.AsyncClient, op: Operation) -> Outcome:
    """Send `op`'s recorded request once and read the whole answer (a stream to its end)."""
    conn = current()
    headers = httpx.Headers({**conn.base_headers(), **conn.tenant_headers().get(op.tenant, {}),
                             "Content-Type": "application/json", **op.headers, "X-Harness-User": op.user,
                             "X-Harness-Tenant": op.tenant, "X-Harness-Op": op.op_id},
                            encoding="latin-1")  # as the client sends them (harness.client.transport)
    try:
        async with client.stream("POST", PATHS.get(op.endpoint, "/v1/completions"),
                                 content=json.dumps(op.request), headers=headers) as resp:
            await resp.aread()
            return Outcome(op.op_id, resp.status_code, is_broken(resp.status_code, True),
                           "" if resp.status_code < 500 else resp.text[:200])
    except httpx.HTTPError as exc:
        return Outcome(op.op_id, None, True, f"{type(exc).__name__}: {exc}"[:200])


async def answers(base_url: str, timeout_s: float = 5.0) -> bool:
    """The server answers GET /v1/models with 200."""
    try:
        conn = current()
        async with httpx.AsyncClient(base_url=base_url, timeout=timeout_s, headers=conn.base_headers(),
                                     verify=conn.verify()) as c:
            return (await c.get(HEALTH_PATH)).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class Replayer:
    """Replays groups of operations against `stack` (see the module docstring)."""

    stack: Stack
    timeout_s: float = 60.0
    wait_s: float = WAIT_FOR_URL_S
    restarts: int = field(default=0, init=False)

    async def ready(self) -> None:
        """Make sure the server serves: restart an owned one that does not, wait for a URL."""
        if self.stack.traits.owned:
            if self.stack.alive and await answers(self.stack.base_url):
                return
            if not self.stack.traits.can_restart:
                raise ServerGone(f"{self.stack.NAME} is down and cannot be restarted")
            await asyncio.to_thread(self.stack.restart)
            self.restarts += 1
            if not await answers(self.stack.base_url):
                raise ServerGone(f"{self.stack.NAME} did not answer after a restart")
            return
        deadline = time.monotonic() + self.wait_s
        while not await answers(self.stack.base_url):
            if time.monotonic() > deadline:
                raise ServerGone(f"{self.stack.base_url} did not answer again within {self.wait_s:g} s")
            await asyncio.sleep(POLL_S)  # waiting for an external server to come back, bounded

    async def fire(self, ops: list[Operation]) -> tuple[list[Outcome], bool]:
        """Fire `ops` concurrently on fresh connections; their outcomes and whether the server
        still answers afterwards. The connections are opened first (one health request each, at
        once), so the replayed requests leave together rather than one connect apart: a failure
        that needs them in flight together is then reproduced whenever it can be."""
        await self.ready()
        n = max(len(ops), 1)
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
        async with httpx.AsyncClient(base_url=self.stack.base_url, limits=limits, verify=current().verify(),
                                     timeout=httpx.Timeout(self.timeout_s, connect=min(10.0, self.timeout_s))) as c:
            with contextlib.suppress(httpx.HTTPError):
                await asyncio.gather(*(c.get(HEALTH_PATH) for _ in range(n)))  # any status opens it
            outcomes = list(await asyncio.gather(*(send(c, o) for o in ops)))
        up = (not self.stack.traits.owned or self.stack.alive) and await answers(self.stack.base_url)
        return outcomes, up
