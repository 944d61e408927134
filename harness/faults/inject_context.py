"""`inject-context`: another tenant's whole prompt read into this request's context."""

from __future__ import annotations

from harness.checks.base import Need
from harness.faults.base import register
from harness.faults.context import ContextFault


@register
class InjectContext(ContextFault):
    name = "inject-context"
    changes = "Prepends another tenant's whole previous prompt (all message contents) to this prompt."
    models = ("a stale or shared block table: a request reads KV blocks still mapped to another request's "
              "sequence, so that request's whole context leaks into this one's attention.")
    detected_by = "counterfactual isolation; cache transparency"
    detectors = ("counterfactual-isolation", "cache-transparency", "canary")
    needs = (Need.TOKEN_IDS,)
    scenarios = ("shared-document.yaml",)

    def taken(self, prompt: str) -> tuple[str, str]:
        return prompt, f"whole prompt ({len(prompt.split())} words)"
