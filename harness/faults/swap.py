"""`swap`: two users' concurrent responses handed to each other."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from harness.checks.base import Need
from harness.faults.base import Fault, FaultContext, register
from harness.faults.exchange import Call, Captured, reshape

SWAP_WINDOW_S = 2.0
"""How long a completed response waits for another user's response to swap with."""


@register
class Swap(Fault):
    name = "swap"
    changes = (f"Holds a completed response up to {SWAP_WINDOW_S:g} s for a concurrent request of another user on "
               "the same endpoint, then hands each the other's response (converting stream/non-stream as needed); "
               "passes through when no partner comes.")
    models = ("request/response mix-ups under batching: output buffers or detokenizer state indexed by batch slot "
              "after the batch was reordered, responses routed to the wrong connection by a gateway.")
    detected_by = ("counterfactual isolation (a user's tokens change with another user's prompt); prompt echo (the "
                   "response reports the other request's prompt ids)")
    detectors = ("counterfactual-isolation", "cache-transparency", "canary", "prompt-echo")
    needs = (Need.TOKEN_IDS,)
    scenarios = ("burst.yaml",)
    edits_response = True

    def __init__(self, ctx: FaultContext) -> None:
        super().__init__(ctx)
        self._pool = _SwapPool()

    async def on_response(self, call: Call, cap: Captured) -> Captured:
        if not cap.usable or call.endpoint is None or not self.ctx.draw():
            return cap
        window = self.ctx.swap_window_s if self.ctx.swap_window_s is not None else SWAP_WINDOW_S
        got = await self._pool.exchange(call, cap, window)
        if got is None:
            return cap
        other_call, other_cap = got
        self.ctx.record(call, f"response swapped with that of op {other_call.op} (user {other_call.user})")
        return reshape(other_cap, call.endpoint, call)


@dataclass
class _SwapEntry:
    call: Call
    cap: Captured
    future: asyncio.Future[tuple[Call, Captured]]


class _SwapPool:
    """Pairs completed responses of different users on the same endpoint, within a window."""

    def __init__(self) -> None:
        self.waiting: list[_SwapEntry] = []

    async def exchange(self, call: Call, cap: Captured, window_s: float) -> tuple[Call, Captured] | None:
        for other in self.waiting:
            if other.call.user != call.user and other.call.endpoint == call.endpoint and not other.future.done():
                self.waiting.remove(other)
                other.future.set_result((call, cap))
                return other.call, other.cap
        entry = _SwapEntry(call, cap, asyncio.get_running_loop().create_future())
        self.waiting.append(entry)
        try:
            return await asyncio.wait_for(asyncio.shield(entry.future), window_s)
        except TimeoutError:
            if entry.future.done():
                return entry.future.result()
            self.waiting.remove(entry)
            return None
