"""`noise` (benign): float jitter far below any near-tie tolerance on every logprob."""

from __future__ import annotations

from harness.faults.base import Fault, register
from harness.faults.editor import Tokens
from harness.faults.exchange import Call, Captured

NOISE_SCALE = 1e-7
"""Magnitude of the jitter `noise` adds to every logprob."""


@register
class Noise(Fault):
    name = "noise"
    kind = "benign"
    changes = (f"Adds jitter of about {NOISE_SCALE:g} to every logprob (same jitter for a token wherever it "
               "appears); never changes a token.")
    models = "healthy float drift between batch shapes and cached/cold kernels."
    scenarios = ("shared-system-prompt.yaml", "burst.yaml")
    controls_every_scenario = True
    edits_response = True

    async def on_response(self, call: Call, cap: Captured) -> Captured:
        if not cap.usable or not self.ctx.draw():
            return cap
        assert cap.payloads is not None and call.endpoint is not None
        moved = Tokens(cap.payloads, call.endpoint).jitter(self.ctx.rng, NOISE_SCALE)
        if moved:
            cap.modified = True
            self.ctx.record(call, f"jittered {moved} logprobs by ~{NOISE_SCALE:g}")
        return cap
