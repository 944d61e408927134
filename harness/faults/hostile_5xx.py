"""`hostile-5xx`: the server answers a hostile tenant's request with HTTP 503.

Stands for input that crashes a request handler or a worker (an unguarded field, a validator that
raises inside the engine): an availability failure one tenant can cause at will. It also shows
that a known finding scoped to one status (HTTP 500 on one field) absorbs nothing else.
"""

from __future__ import annotations

from harness.faults.base import ADVERSARY_MEETS_LORA_CRASH, Fault, register
from harness.faults.exchange import Call, Captured
from harness.history.record import Role

HOSTILE_RUNS = frozenset(r.value for r in Role if r.hostile)
BODY = {"error": {"message": "injected: worker failed on this input", "type": "ServiceUnavailable", "code": 503}}


@register
class Hostile5xx(Fault):
    name = "hostile-5xx"
    changes = "Answers HTTP 503 (instead of forwarding) to requests of the adversarial tenant."
    models = "hostile input that crashes a request handler or an engine worker: an availability failure."
    detected_by = "availability (a hostile request answered with a 5xx)"
    detectors = ("availability",)
    scenarios = ("adversarial-tenant.yaml",)
    without_adapters = ADVERSARY_MEETS_LORA_CRASH

    async def on_request(self, call: Call) -> Captured | None:
        run = (call.op or "").split("/", 1)[0]
        if not (call.endpoint and run in HOSTILE_RUNS):
            return None
        if not self.ctx.draw():
            return None
        self.ctx.record(call, "answered HTTP 503")
        return Captured.error(503, "Service Unavailable", BODY)
