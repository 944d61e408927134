"""`stale`: a stored response served for a different prompt that shares a long prefix."""

from __future__ import annotations

from collections import deque

from harness.checks.base import Need
from harness.faults.base import HISTORY_SIZE, Fault, FaultContext, register
from harness.faults.exchange import Call, Captured, reshape
from harness.faults.prompts import common_prefix, prompt_text

STALE_MIN_PREFIX_WORDS = 32
"""Shared leading words that make `stale` treat two different prompts as the same key."""


@register
class Stale(Fault):
    name = "stale"
    changes = (f"Answers a request with the stored response of an earlier request whose prompt shares at least "
               f"{STALE_MIN_PREFIX_WORDS} leading words but differs after them, without asking the server.")
    models = ("a response or prefix cache keyed on too little (a truncated prompt, a hash of the first blocks "
              "only), serving one request's result for another.")
    detected_by = ("prompt echo (the response reports the stored request's prompt ids, in every run alike); cache "
                   "transparency and counterfactual isolation where the stored response differs between runs")
    detectors = ("cache-transparency", "counterfactual-isolation", "prompt-echo")
    needs = (Need.TOKEN_IDS,)
    scenarios = ("shared-document.yaml",)
    edits_response = True

    def __init__(self, ctx: FaultContext) -> None:
        super().__init__(ctx)
        self._responses: deque[tuple[str, str | None, tuple[str, ...], Captured, Call]] = deque(maxlen=HISTORY_SIZE)

    @staticmethod
    def _words(call: Call) -> tuple[str, ...] | None:
        assert call.body is not None and call.endpoint is not None
        text = prompt_text(call.body, call.endpoint)
        return tuple(text.split()) if text is not None else None

    async def on_request(self, call: Call) -> Captured | None:
        """Serve the stored response of a different prompt sharing a long prefix, if there is one."""
        words = self._words(call)
        if words is None or call.endpoint is None:
            return None
        best: tuple[int, Captured, Call] | None = None
        for endpoint, model, stored_words, stored, stored_call in self._responses:
            if endpoint != call.endpoint or model != call.model or stored_words == words:
                continue
            n = common_prefix(words, stored_words)
            if n >= STALE_MIN_PREFIX_WORDS and (best is None or n > best[0]):
                best = (n, stored, stored_call)
        if best is None or not self.ctx.draw():
            return None
        n, stored, src = best
        self.ctx.record(call, f"answered with the stored response of op {src.op} (user {src.user}), "
                              f"whose prompt shares the first {n} words only")
        return reshape(stored, call.endpoint, call)

    async def on_response(self, call: Call, cap: Captured) -> Captured:
        """Remember a usable response for later requests."""
        words = self._words(call)
        if cap.usable and words is not None and call.endpoint is not None:
            self._responses.append((call.endpoint, call.model, words, cap, call))
        return cap
