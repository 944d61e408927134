"""The timing audit's two checks, registered so that every list of checks reads one registry.

Their results come from `harness audit-timing` (harness/audit/timing.py), which measures rather
than reads a history, so they carry no history function (`Scope.AUDIT`).
"""

from __future__ import annotations

from harness.checks.base import Check, Need, Scope, register

TIMING = register(Check(
    "timing-side-channel",
    "Under the salted policy the attacker's time to first token for the victim's exact prompt must not "
    "differ from a fresh prompt's, next to a same-tenant hit that does.",
    needs=(Need.SALT,), scope=Scope.AUDIT))

CACHED_TOKENS = register(Check(
    "cached-tokens-side-channel",
    "Under the salted policy the attacker's request with the victim's exact prompt must report no cached tokens.",
    needs=(Need.SALT,), scope=Scope.AUDIT))
