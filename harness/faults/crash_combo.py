"""`crash-combo`: two requests that carry an unusual value of one field crash when they overlap.

The proxy picks one field from the target's own OpenAPI request schema by its seed (a boolean,
number or enum field that the harness's ordinary requests never set; the harness is not told
which). A request *carries* it when its body sets the field to a non-default value that the
server accepts (HTTP 200). Whenever two carriers are in flight at the same time, both fail, with
HTTP 500 or a dropped connection (by seed), as requests of a batch that crashed would; one
carrier alone passes. Stands for a batch-level crash that needs two unusual requests in one
batch: found only by concurrent hostile traffic, attributed only by replaying the pair together.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from harness.adversary.cases import simple_fields
from harness.adversary.schema import NO_DEFAULT, FieldSpec, field_specs
from harness.faults.base import ADVERSARY_MEETS_LORA_CRASH, Fault, FaultContext, register
from harness.faults.exchange import Call, Captured

ORDINARY_FIELDS = frozenset({
    "model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature", "stream", "stream_options",
    "return_tokens_as_token_ids", "return_token_ids", "logprobs", "top_logprobs", "seed", "cache_salt", "user",
    "request_id", "session_id",
})
"""Fields the harness's ordinary (victim) requests set or that name a requester: never chosen."""
FALLBACK = (FieldSpec("echo", {"type": "boolean"}, True, False), FieldSpec("n", {"type": "integer"}, False, 1),
            FieldSpec("presence_penalty", {"type": "number"}, True, 0.0))
"""Candidates when the target serves no OpenAPI document."""
WAIT_S = 30.0
"""How long a carrier waits for an overlapping one's upstream answer (is its value valid?)."""
BODY = {"error": {"message": "injected: the batch crashed", "type": "InternalServerError", "code": 500}}


@dataclass
class _Carrier:
    op: str
    start: float
    end: float | None = None
    valid: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)


@register
class CrashCombo(Fault):
    name = "crash-combo"
    changes = ("When two requests that both set one field (chosen from the target's OpenAPI schema by the seed) to "
               "an accepted non-default value overlap in time, both get HTTP 500 or a dropped connection.")
    models = ("a batch-level crash that needs two unusual requests in one batch (an engine assertion on a "
              "combination of sampling options): one tenant can take down the batch of everyone else.")
    detected_by = "availability (hostile requests in flight together fail; the replayed pair reproduces it)"
    detectors = ("availability",)
    scenarios = ("adversarial-tenant.yaml",)
    edits_response = True
    without_adapters = ADVERSARY_MEETS_LORA_CRASH

    def __init__(self, ctx: FaultContext) -> None:
        super().__init__(ctx)
        self.spec: FieldSpec | None = None
        self.drop = False
        self._chosen = asyncio.Lock()
        self._live: dict[int, _Carrier] = {}

    async def field(self) -> FieldSpec:
        """The field this proxy crashes on (read from the upstream schema once, chosen by seed)."""
        async with self._chosen:
            if self.spec is None:
                doc = await _document(self.ctx.target_url)
                found = [s for s in simple_fields(field_specs(doc, "/v1/completions") if doc else [])
                         if s.name not in ORDINARY_FIELDS]
                pool = sorted(found or FALLBACK, key=lambda s: s.name)
                self.spec = self.ctx.rng.choice(pool)
                self.drop = self.ctx.rng.random() < 0.5
            return self.spec

    def carries(self, spec: FieldSpec, body: dict[str, Any]) -> bool:
        if spec.name not in body:
            return False
        value = body[spec.name]
        return value is not None and not (spec.default is not NO_DEFAULT and value == spec.default)

    async def on_request(self, call: Call) -> Captured | None:
        spec = await self.field()
        if call.body is not None and self.carries(spec, call.body):
            self._live[id(call)] = _Carrier(call.op or f"seq {call.seq}", time.monotonic())
        return None

    async def on_response(self, call: Call, cap: Captured) -> Captured:
        me = self._live.get(id(call))
        if me is None:
            return cap
        me.end, me.valid = time.monotonic(), cap.usable
        me.done.set()
        overlapping = [c for k, c in self._live.items() if k != id(call) and c.start < me.end
                       and (c.end is None or c.end > me.start)]
        for c in overlapping:
            if not c.done.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(c.done.wait(), WAIT_S)
        partners = [c for c in overlapping if c.valid]
        self._forget(me)
        if not (me.valid and partners) or not self.ctx.draw():
            return cap
        spec = self.spec
        assert spec is not None
        what = "dropped the connection" if self.drop else "answered HTTP 500"
        self.ctx.record(call, f"{spec.name}={json.dumps((call.body or {}).get(spec.name))} overlapped "
                              f"{partners[0].op} carrying {spec.name}: {what}")
        if self.drop:
            if call.request.transport is not None:
                call.request.transport.close()
            return cap
        return Captured.error(500, "Internal Server Error", BODY)

    def on_abandoned(self, call: Call) -> None:
        """A carrier whose client left (or whose upstream failed) ends now, invalid: left open it
        would overlap every later carrier, and a lone request would then seem to crash."""
        me = self._live.pop(id(call), None)
        if me is not None:
            me.end, me.valid = time.monotonic(), False
            me.done.set()

    def _forget(self, me: _Carrier) -> None:
        """Drop carriers that ended before every live one began (they can overlap nothing new)."""
        live_starts = [c.start for c in self._live.values() if c.end is None]
        horizon = min(live_starts, default=me.end or 0.0)
        for k in [k for k, c in self._live.items() if c.end is not None and c.end < horizon - 1.0]:
            del self._live[k]


async def _document(base_url: str) -> dict[str, Any] | None:
    try:
        async with aiohttp.ClientSession() as s, s.get(base_url + "/openapi.json",
                                                       timeout=aiohttp.ClientTimeout(total=10)) as r:
            if r.status != 200:
                return None
            doc = await r.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None
