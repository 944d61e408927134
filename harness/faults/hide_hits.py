"""`hide-hits` (blinding): the server's cached-token counts removed from every response.

Stands for a stack that stops reporting cache reuse (a gateway that rewrites `usage`, a server
started without prompt-token details): the cache may be shared, but the harness can no longer see
it, so a run that shares prefixes has not shown that cross-user reuse happened and is UNKNOWN, never
PASS (fail closed; docs/design.md, "Verdict", "Minimum evidence").
"""

from __future__ import annotations

from harness.faults.base import Fault, register
from harness.faults.exchange import Call, Captured


@register
class HideHits(Fault):
    name = "hide-hits"
    kind = "blind"
    changes = "Deletes usage.prompt_tokens_details.cached_tokens from every response that reports it."
    models = "a stack that stops reporting cache reuse: whatever it shares, the run cannot show reuse happened."
    detected_by = "exercised UNKNOWN (no cross-user reuse observed where prefixes are shared)"
    detectors = ("exercised",)
    scenarios = ("shared-system-prompt.yaml",)
    edits_response = True

    async def on_response(self, call: Call, cap: Captured) -> Captured:
        if not cap.usable:
            return cap
        for _, details in cap.prompt_details():
            if "cached_tokens" in details and self.ctx.draw():
                del details["cached_tokens"]
                cap.modified = True
                self.ctx.record(call, "deleted the reported cached_tokens")
        return cap
