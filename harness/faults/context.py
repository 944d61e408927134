"""What `bleed` and `inject-context` share: the latest prompts of other tenants, remembered, and
(part of) one prepended to a request's prompt."""

from __future__ import annotations

from collections import deque

from harness.faults.base import HISTORY_SIZE, Fault, FaultContext
from harness.faults.exchange import Call, Captured
from harness.faults.prompts import prepend, prompt_text


class ContextFault(Fault):
    """Prepends text taken from the latest prompt of another tenant (`taken` says which part)."""

    def __init__(self, ctx: FaultContext) -> None:
        super().__init__(ctx)
        self._prompts: deque[tuple[str | None, str | None, str | None, str]] = deque(maxlen=HISTORY_SIZE)

    def taken(self, prompt: str) -> tuple[str, str]:
        """The text to prepend from another tenant's prompt, and what it is in words."""
        raise NotImplementedError

    async def on_request(self, call: Call) -> Captured | None:
        assert call.body is not None and call.endpoint is not None
        own = prompt_text(call.body, call.endpoint)
        # A request the harness labelled (X-Harness-Op) takes its source only from other labelled
        # requests, so unlabelled side traffic (the capability probe) never becomes "another tenant".
        source = next((p for p in reversed(self._prompts)
                       if p[0] != call.tenant and (call.op is None or p[2] is not None)), None)
        if own is not None:
            self._prompts.append((call.tenant, call.user, call.op, own))
        if source is None or own is None or not self.ctx.draw():
            return None
        s_tenant, s_user, s_op, s_text = source
        text, what = self.taken(s_text)
        if not text or not prepend(call.body, call.endpoint, text):
            return None
        call.body_changed = True
        self.ctx.record(call, f"prepended {what} of op {s_op} (tenant {s_tenant}, user {s_user})")
        return None
