"""`bleed`: the tail of another tenant's prompt reused as if it were this request's."""

from __future__ import annotations

from harness.checks.base import Need
from harness.faults.base import register
from harness.faults.context import ContextFault

BLEED_TAIL_WORDS = 24
"""How many trailing words of another tenant's prompt `bleed` prepends."""


@register
class Bleed(ContextFault):
    name = "bleed"
    changes = (f"Prepends the last {BLEED_TAIL_WORDS} words of an earlier prompt from another tenant to this prompt "
               "(completions: the prompt string; chat: the first message's content).")
    models = ("KV-cache bleed across tenants: a block hash that omits an input (adapter, salt, image bytes) or "
              "collides, so the tail blocks of another tenant's prompt are reused as if they were this one's.")
    detected_by = "counterfactual isolation; cache transparency"
    detectors = ("counterfactual-isolation", "cache-transparency")
    needs = (Need.TOKEN_IDS,)
    scenarios = ("shared-system-prompt.yaml",)

    def taken(self, prompt: str) -> tuple[str, str]:
        words = prompt.split()[-BLEED_TAIL_WORDS:]
        return " ".join(words), f"last {len(words)} words"
