"""`victim-hang`: a victim's request hangs, then is dropped, when it overlaps a hostile request.

Stands for a wedged batch: an input that stalls the engine step it shares, so every other
tenant's request in that batch stops making progress until a watchdog kills it and the
connection drops. Slowness alone is not harm; a request that never gets an answer is. The hostile
request itself is answered normally.
"""

from __future__ import annotations

import asyncio

from harness.faults.base import register
from harness.faults.exchange import Call, Captured
from harness.faults.overlap import HOLD_S, HoldsHostile

HANG_S = 5.0
"""How long a harmed request hangs before its connection is dropped."""


@register
class VictimHang(HoldsHostile):
    name = "victim-hang"
    changes = (f"Keeps each request of the adversarial tenant in flight {HOLD_S:g} s longer; holds the response of "
               f"every other tenant's request in flight at the same time for {HANG_S:g} s, then drops its connection.")
    models = ("an input that wedges the engine step it is batched in: other tenants' requests stall until a watchdog "
              "kills them (harm to a victim, not mere slowness: they never get an answer).")

    async def on_response(self, call: Call, cap: Captured) -> Captured:
        if not self.harms(call):
            return cap
        self.ctx.record(call, f"held {HANG_S:g} s, then dropped: a hostile request was in flight with it")
        await asyncio.sleep(HANG_S)  # the fault itself: a stalled request, not synchronisation
        if call.request.transport is not None:
            call.request.transport.close()  # the connection drops without an answer
        return Captured(cap.status, cap.reason, cap.headers, b"", cap.sse, broken="dropped after a hang")
