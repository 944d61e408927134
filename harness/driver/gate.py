"""A gate that holds traffic off the server while the nemesis acts on it.

The ordinary requests of a run are drained by the driver before an act that changes outputs or
takes the server away (an adapter swap, a restart). The adversarial tenant's hostile requests run
beside them, in their own loop: without this gate they would keep arriving while the server is
down, every one of them failing, so the adversary's budget would be spent on a server that is not
there (the selftest's `crash-combo` row under `restart` was never injected for that reason).
Hostile requests pass through the gate; the nemesis closes it for the act, waits until no hostile
request is in flight, acts, and opens it again (docs/design.md, "Nemeses").
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class Gate:
    """Open unless an act is in progress; counts the requests that passed and are still in flight."""

    def __init__(self) -> None:
        self._open = asyncio.Event()
        self._open.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @asynccontextmanager
    async def passage(self) -> AsyncIterator[None]:
        """One request: waits while the gate is closed, and counts as in flight until it ends."""
        while not self._open.is_set():  # re-checked on waking: the gate may have closed again
            await self._open.wait()
        self._in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    @asynccontextmanager
    async def closed(self) -> AsyncIterator[None]:
        """An act: no new request passes, and the body runs once none is in flight."""
        self._open.clear()
        try:
            await self._idle.wait()
            yield
        finally:
            self._open.set()
