"""Choose how the solo replay avoids cache reuse on this target, verified by real requests.

`salt`: a fresh cache salt per request (same salt hits, another salt does not);
`reset`: a prefix-cache reset before each request (a repeat no longer hits after a reset);
`warm`: neither works, so the reference may have run warm (the report says so).
"""

from __future__ import annotations

import secrets

from harness.driver.driver import Isolation
from harness.scenario.render import make_nonce
from harness.scenario.words import draw_words
from harness.target.client import GenerationRequest, TargetClient


async def _cached(client: TargetClient, model: str, prompt: str, salt: str | None) -> int | None:
    r = await client.generate(GenerationRequest("completions", model, prompt=prompt, max_tokens=1,
                                                top_logprobs=0, cache_salt=salt))
    return r.cached_tokens if r.ok else None


async def detect_solo_isolation(client: TargetClient, model: str) -> Isolation:
    import random

    prompt = make_nonce() + "".join(" " + w for w in draw_words(random.Random(secrets.randbits(32)), 96))
    salt = "probe-" + secrets.token_hex(6)
    if await _cached(client, model, prompt, salt) is not None:
        hit = await _cached(client, model, prompt, salt)
        other = await _cached(client, model, prompt, "probe-" + secrets.token_hex(6))
        if hit and other == 0:
            return "salt"
    prompt = make_nonce() + prompt
    if await _cached(client, model, prompt, None) is not None and await _cached(client, model, prompt, None):
        if await client.reset_prefix_cache() and await _cached(client, model, prompt, None) == 0:
            return "reset"
    return "warm"
