"""What `salt-drop` and `salt-merge` share: an edit of a request's `cache_salt`."""

from __future__ import annotations

from harness.checks.base import Need
from harness.faults.base import Fault
from harness.faults.exchange import Call, Captured


class SaltFault(Fault):
    """Edits the `cache_salt` of a salted request (`edit` says how, in words, or None to leave it)."""

    detected_by = "no observation across salts (cached-token counts)"
    detectors = ("cache-accounting", "cached-tokens-side-channel", "timing-side-channel")
    needs = (Need.CACHED_TOKENS, Need.SALT)
    scenarios = ("salted-tenants.yaml",)
    timing_audit = True

    def edit(self, body: dict[str, object], salt: object) -> str:
        """Change the salt in `body`; what was done, in words."""
        raise NotImplementedError

    async def on_request(self, call: Call) -> Captured | None:
        assert call.body is not None
        salt = call.body.get("cache_salt")
        if salt is None or not self.ctx.draw():
            return None
        self.ctx.record(call, self.edit(call.body, salt))
        call.body_changed = True
        return None
