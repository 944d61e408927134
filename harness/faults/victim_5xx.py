"""`victim-5xx`: a victim's request fails with HTTP 500 when it overlaps a hostile request.

Stands for a batch-level failure one tenant can trigger in another tenant's request: an input
that makes the engine step raise, so every request sharing the batch gets an internal error
while the server itself stays up. The hostile request itself is answered normally; only the
other tenants' requests that were in flight with it fail. Harm to a victim (docs/design.md,
"Verdict"): an availability FAIL naming the (victim, hostile) pair once a replay reproduces it.
"""

from __future__ import annotations

from harness.faults.base import register
from harness.faults.exchange import Call, Captured
from harness.faults.overlap import HOLD_S, HoldsHostile

BODY = {"error": {"message": "injected: the batch this request shared failed", "type": "InternalServerError",
                  "code": 500}}


@register
class Victim5xx(HoldsHostile):
    name = "victim-5xx"
    changes = (f"Keeps each request of the adversarial tenant in flight {HOLD_S:g} s longer, and answers HTTP 500 "
               "(instead of the real answer) to every request of another tenant in flight at the same time.")
    models = ("an input that fails the whole engine step it is batched in: other tenants' requests in that batch get "
              "an internal error while the server stays up (harm to a victim).")

    async def on_response(self, call: Call, cap: Captured) -> Captured:
        if not self.harms(call):
            return cap
        self.ctx.record(call, "answered HTTP 500: a hostile request was in flight with it")
        return Captured.error(500, "Internal Server Error", BODY)
