"""`delay` (benign): added network and queueing latency."""

from __future__ import annotations

import asyncio

from harness.faults.base import Fault, register
from harness.faults.exchange import Call, Captured

DELAY_MAX_S = 0.2
"""`delay` adds a uniform random latency in [0, DELAY_MAX_S)."""


@register
class Delay(Fault):
    name = "delay"
    kind = "benign"
    changes = f"Adds a uniform random latency of 0-{DELAY_MAX_S * 1000:.0f} ms before forwarding each request."
    models = "network and queueing latency."
    scenarios = ("shared-system-prompt.yaml",)
    timing_audit = True

    async def on_request(self, call: Call) -> Captured | None:
        if self.ctx.draw():
            wait = self.ctx.rng.uniform(0.0, DELAY_MAX_S)
            self.ctx.record(call, f"delayed {wait * 1000:.0f} ms")
            await asyncio.sleep(wait)  # the fault itself: latency, not synchronisation
        return None
