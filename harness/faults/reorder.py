"""`reorder` (benign): completed responses released in shuffled order."""

from __future__ import annotations

import asyncio
import random

from harness.faults.base import Fault, FaultContext, register
from harness.faults.exchange import Call, Captured

REORDER_WINDOW_S = 0.1
"""`reorder` holds completed responses this long and releases the batch shuffled."""


@register
class Reorder(Fault):
    name = "reorder"
    kind = "benign"
    changes = (f"Holds completed responses for {REORDER_WINDOW_S * 1000:.0f} ms and releases each batch in "
               "shuffled order.")
    models = "completion order that differs from submission order under concurrency."
    scenarios = ("burst.yaml",)
    edits_response = True

    def __init__(self, ctx: FaultContext) -> None:
        super().__init__(ctx)
        self._held = _Reorderer(ctx.rng, REORDER_WINDOW_S)

    async def on_response(self, call: Call, cap: Captured) -> Captured:
        if self.ctx.draw():
            rank, size = await self._held.hold()
            self.ctx.record(call, f"held {REORDER_WINDOW_S * 1000:.0f} ms, released {rank + 1} of {size}")
        return cap


class _Reorderer:
    """Holds completed responses for a window, then releases the batch in shuffled order."""

    def __init__(self, rng: random.Random, window_s: float) -> None:
        self.rng = rng
        self.window_s = window_s
        self.pending: list[asyncio.Future[tuple[int, int]]] = []
        self.timer: asyncio.TimerHandle | None = None

    async def hold(self) -> tuple[int, int]:
        """Wait for release; returns (release rank, batch size)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[int, int]] = loop.create_future()
        self.pending.append(fut)
        if self.timer is None:
            self.timer = loop.call_later(self.window_s, self._flush)
        return await fut

    def _flush(self) -> None:
        batch, self.pending, self.timer = self.pending, [], None
        self.rng.shuffle(batch)
        for rank, fut in enumerate(batch):
            if not fut.done():
                fut.set_result((rank, len(batch)))
