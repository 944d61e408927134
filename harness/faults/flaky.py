"""`flaky` (blinding): a seeded share of requests answered HTTP 503 without reaching the server.

Stands for an overloaded or unhealthy stack during an ordinary scenario (no tenant's input has
anything to do with it): a conversation cut by a failed turn was not compared past it, so the run
has not shown what it claims and is UNKNOWN, never PASS and never blamed on a tenant.
"""

from __future__ import annotations

from harness.faults.base import Fault, register
from harness.faults.exchange import Call, Captured

BODY = {"error": {"message": "injected: server overloaded", "type": "ServiceUnavailable", "code": 503}}
SHARE = 0.2
"""The share of generation requests `flaky` answers with a 503 at rate 1."""


@register
class Flaky(Fault):
    name = "flaky"
    kind = "blind"
    changes = f"Answers HTTP 503 (instead of forwarding) to about {SHARE:.0%} of generation requests, by seed."
    models = "an overloaded or unhealthy stack: requests fail for reasons no tenant caused."
    detected_by = "requests UNKNOWN (failed requests: conversations not compared past them)"
    detectors = ("requests",)
    scenarios = ("shared-system-prompt.yaml",)

    async def on_request(self, call: Call) -> Captured | None:
        if not call.endpoint or not self.ctx.draw() or self.ctx.rng.random() >= SHARE:
            return None
        self.ctx.record(call, "answered HTTP 503 (overload)")
        return Captured.error(503, "Service Unavailable", BODY)
