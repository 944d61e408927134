"""`phantom-hit`: a cache hit reported that the server never had."""

from __future__ import annotations

from harness.checks.base import Need
from harness.faults.base import Fault, register
from harness.faults.exchange import Call, Captured

PHANTOM_BLOCK = 32
"""`phantom-hit` reports the prompt length rounded down to a multiple of this."""


@register
class PhantomHit(Fault):
    name = "phantom-hit"
    changes = (f"On a response whose real cached-token count is 0, reports the prompt length rounded down to a "
               f"multiple of {PHANTOM_BLOCK} as cached. Needs a reported count (a stream without "
               "stream_options.include_usage, or a server without prompt-token details, is left alone).")
    models = ("broken cache accounting: hits counted against the wrong request or a hash collision reported as "
              "a hit; a count that nothing in the cache domain explains.")
    detected_by = "cache accounting (a hit nothing explains)"
    detectors = ("cache-accounting",)
    needs = (Need.CACHED_TOKENS,)
    scenarios = ("strict-prefix.yaml",)
    edits_response = True

    async def on_response(self, call: Call, cap: Captured) -> Captured:
        if not cap.usable:
            return cap
        for usage, details in cap.prompt_details():
            prompt_tokens = usage.get("prompt_tokens")
            if details.get("cached_tokens") != 0 or not isinstance(prompt_tokens, int):
                continue
            fake = prompt_tokens // PHANTOM_BLOCK * PHANTOM_BLOCK
            if fake <= 0 or not self.ctx.draw():
                return cap
            details["cached_tokens"] = fake
            cap.modified = True
            self.ctx.record(call, f"reported cached_tokens {fake} (real 0) of {prompt_tokens} prompt tokens")
            return cap
        return cap
