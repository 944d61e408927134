"""`poison-request`: one hostile request crashes the "server": it is answered HTTP 500 and every
other request in flight at that moment loses its connection, as when an engine process dies.

The poison is one exact request body, chosen by the proxy's seed among the first hostile
requests it sees (the harness is not told which): the k-th hostile request's body, and every
later request with the same body, crash. Everything else passes. Incident triage must replay the
requests in flight, find that the crash recurs, and bisect it down to the poison alone: one
availability FAIL naming it, not one violation per request the crash took down.
"""

from __future__ import annotations

import json

from harness.faults.base import ADVERSARY_MEETS_LORA_CRASH, Fault, FaultContext, register
from harness.faults.exchange import Call, Captured
from harness.faults.overlap import LiveCalls, hostile

FIRST_K = 8
"""The poison is the k-th hostile request seen, k drawn from 1..FIRST_K by the seed."""
BODY = {"error": {"message": "injected: the engine died on this request", "type": "EngineDeadError", "code": 500}}


def _signature(call: Call) -> str:
    return json.dumps(call.body, sort_keys=True, default=str)


@register
class PoisonRequest(Fault):
    name = "poison-request"
    changes = ("Picks one hostile request body by seed; a request with that exact body is answered HTTP 500 and every "
               "other request in flight at that moment has its connection dropped (a crash).")
    models = ("an input that kills the engine process (an unguarded field reaching a kernel): the crashing request "
              "and every other tenant's request in flight die with it.")
    detected_by = "availability (one incident, replayed and bisected to the poison request)"
    detectors = ("availability",)
    scenarios = ("adversarial-tenant.yaml",)
    without_adapters = ADVERSARY_MEETS_LORA_CRASH
    edits_response = True

    def __init__(self, ctx: FaultContext) -> None:
        super().__init__(ctx)
        self._live = LiveCalls()
        self._k = ctx.rng.randint(1, FIRST_K)
        self._seen = 0
        self._poison: str | None = None

    async def on_request(self, call: Call) -> Captured | None:
        self._live.enter(call)
        if not hostile(call):
            return None
        sig = _signature(call)
        if self._poison is None:
            self._seen += 1
            if self._seen == self._k:
                self._poison = sig
        if sig != self._poison:
            return None
        self._live.leave(call)
        lost = self._live.doom_all(but=call)
        self.ctx.record(call, f"crash: answered HTTP 500 and dropped the {lost} other request(s) in flight")
        return Captured.error(500, "Internal Server Error", BODY)

    async def on_response(self, call: Call, cap: Captured) -> Captured:
        _, doomed = self._live.leave(call)
        if not doomed:
            return cap
        self.ctx.record(call, "connection dropped: in flight when the poison request crashed the server")
        if call.request.transport is not None:
            call.request.transport.close()
        return Captured(cap.status, cap.reason, cap.headers, b"", cap.sse, broken="dropped in a crash")
