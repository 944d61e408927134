"""What the target offers, as the `Need`s checks and faults rest on, and the solo replay's mode.

Both are read off the capability probe. Unverified counts as absent, as in the run itself (the
solo oracle runs warm unless a salt or a reset was verified): docs/design.md, "Verdict".
"""

from __future__ import annotations

from typing import Literal

from harness.checks.base import Need
from harness.client import TargetClient
from harness.probe.capabilities import Capabilities, Capability, probe

Isolation = Literal["shared", "salt", "reset", "restart", "warm"]


async def probe_target(client: TargetClient) -> Capabilities:
    """The capability probe as a run takes it. Salts leave the shared cache alone; only a target
    without working salts gets its cache reset (to verify the reset fallback of the solo oracle)."""
    caps = await probe(client, allow_reset=False)
    if not caps.cache_salt_effective.available and client.connection.allow_disruptive:
        caps = await probe(client, allow_reset=True)  # a reset disturbs everyone: only where allowed
    return caps


def solo_isolation(caps: Capabilities, can_restart: bool = False) -> Isolation:
    """How the solo replay avoids cache reuse: a fresh salt, else a reset, else (when the harness
    launched the server) a fresh server process per request, else it may run warm."""
    if caps.cache_salt_effective.available:
        return "salt"
    if caps.cache_reset.available:
        return "reset"
    if can_restart:
        return "restart"
    return "warm"


def offered(caps: Capabilities, can_restart: bool = False) -> dict[str, str | None]:
    """Each `Need` (by value) -> None where the probe verified it, else why not (one line).
    `can_restart`: the harness owns the server, so a solo reference can run on a fresh process."""
    def why(cap: Capability, absent: str, unverified: str) -> str | None:
        if cap.available:
            return None
        return absent if cap.available is False else f"{unverified} ({cap.evidence})"

    depth = caps.logprobs.value if isinstance(caps.logprobs.value, int) else 0
    out: dict[Need, str | None] = {
        Need.TOKEN_IDS: why(caps.output_token_ids, "the target gives no output token ids and none could be recovered",
                            "output token ids could not be verified"),
        Need.PROMPT_IDS: why(caps.prompt_token_ids, "the target echoes no prompt token ids",
                             "prompt token ids could not be verified"),
        Need.TOP_LOGPROBS: None if caps.logprobs.available and depth >= 2 else
        f"the target gives {depth} top logprob(s) per position, 2 needed",
        Need.CACHED_TOKENS: why(caps.cached_tokens, "the target reports no cached-token counts",
                                "cached-token counts could not be verified"),
        Need.SALT: why(caps.cache_salt_effective,
                       f"cache_salt does not separate cache domains ({caps.cache_salt_effective.evidence})",
                       "cache_salt separation could not be verified"),
        Need.COLD_REFERENCE: None if solo_isolation(caps, can_restart) != "warm" else
        "neither a cache salt nor a cache reset could be verified, so the solo reference may run warm",
        Need.PREFIX_METRICS: why(caps.prefix_cache_metrics, "the target exposes no prefix-cache counters on /metrics",
                                 "prefix-cache counters could not be verified"),
    }
    return {n.value: v for n, v in out.items()}


def lacking(caps: Capabilities, can_restart: bool = False) -> dict[str, str]:
    """Only the needs the probe could not verify (need -> why): `offered` without the verified ones."""
    return {need: why for need, why in offered(caps, can_restart).items() if why is not None}

