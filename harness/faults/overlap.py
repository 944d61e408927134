"""Which generation requests are in flight at the proxy right now, and which of them belong to
the adversarial tenant: what the victim-harm faults (`victim-5xx`, `victim-hang`,
`poison-request`) key on. A request is hostile when its `X-Harness-Op` names a hostile run (so a
replay of the same request, which carries the same header, is treated the same)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from harness.faults.base import ADVERSARY_MEETS_LORA_CRASH, Fault, FaultContext
from harness.faults.exchange import Call, Captured
from harness.history.record import Role

HOSTILE_RUNS = frozenset(r.value for r in Role if r.hostile)
HOLD_S = 0.2
"""How long the victim-harm faults keep a hostile request in flight before forwarding it (the
batch it wedges): long enough that requests sent together with it do overlap it."""
STALE_S = 600.0
"""A call still listed after this long lost its response path (an upstream error): forgotten."""


def hostile(call: Call) -> bool:
    return (call.op or "").split("/", 1)[0] in HOSTILE_RUNS


@dataclass
class _Live:
    call: Call
    since: float
    overlapped: bool = False
    doomed: bool = False


@dataclass
class LiveCalls:
    """The generation calls between `enter` and `leave`; a victim call is marked `overlapped`
    when a hostile call was in flight at any moment of its own life."""

    calls: dict[int, _Live] = field(default_factory=dict)

    def _fresh(self) -> list[_Live]:
        now = time.monotonic()
        for seq in [s for s, e in self.calls.items() if now - e.since > STALE_S]:
            del self.calls[seq]
        return list(self.calls.values())

    def enter(self, call: Call) -> None:
        live = self._fresh()
        entry = _Live(call, time.monotonic())
        if hostile(call):
            for e in live:
                if not hostile(e.call):
                    e.overlapped = True
        elif any(hostile(e.call) for e in live):
            entry.overlapped = True
        self.calls[call.seq] = entry

    def leave(self, call: Call) -> tuple[bool, bool]:
        """Forget `call`; (it overlapped a hostile call, it was doomed by a crash)."""
        entry = self.calls.pop(call.seq, None)
        return (entry.overlapped, entry.doomed) if entry else (False, False)

    def doom_all(self, but: Call) -> int:
        """Mark every other call in flight as lost in a crash; how many."""
        doomed = [e for e in self._fresh() if e.call.seq != but.seq]
        for e in doomed:
            e.doomed = True
        return len(doomed)


class HoldsHostile(Fault):
    """Base of the victim-harm faults that act on a victim's response: tracks the calls in flight
    (`self._live`) and keeps each hostile request in flight `HOLD_S` longer (the batch it wedges);
    `harms` says which victim responses to act on."""

    detected_by = "availability (harm to another tenant, reproduced by replaying the overlapping pair)"
    detectors = ("availability",)
    scenarios = ("adversarial-tenant.yaml",)
    without_adapters = ADVERSARY_MEETS_LORA_CRASH
    edits_response = True

    def __init__(self, ctx: FaultContext) -> None:
        super().__init__(ctx)
        self._live = LiveCalls()

    async def on_request(self, call: Call) -> Captured | None:
        self._live.enter(call)
        if hostile(call):
            await asyncio.sleep(HOLD_S)  # the fault itself: the hostile request's batch stays busy
        return None

    def harms(self, call: Call) -> bool:
        """Ends `call`'s tracking; True for another tenant's call that overlapped a hostile one,
        when the seeded coin says so."""
        overlapped, _ = self._live.leave(call)
        return not hostile(call) and overlapped and self.ctx.draw()
