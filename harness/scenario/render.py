"""Turn a scenario into concrete content: prefix texts, each user's private turns and canaries.

Content is drawn from seeded generators keyed by (seed, scenario, what), never by position, so a
scenario cut down to fewer users keeps every remaining user's content. A user's private content
has a `variant`: variant 0 is the run's; a counterfactual re-run re-draws other users' content
with another variant at the same word (on the embedded server: token) lengths, while shared
prefixes stay byte-identical.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

from harness.scenario.model import Scenario, User
from harness.scenario.words import draw_words

CANARY_WORDS = 8
FISHING_WORDS = 2  # a fishing tail is a canary's first words; a leak shows as the rest of it


def _rng(*parts: object) -> random.Random:
    key = "/".join(str(p) for p in parts).encode()
    return random.Random(int.from_bytes(hashlib.sha256(key).digest()[:8], "big"))


def words_text(words: list[str]) -> str:
    """Pool words as text; each starts with a space so each is one token on the embedded model."""
    return "".join(" " + w for w in words)


@dataclass(frozen=True)
class UserPlan:
    """Everything the driver needs to run one user's conversation."""

    user: str
    tenant: str
    variant: int
    system_text: str  # nonce + shared prefixes; the start of every prompt of this user
    turn_texts: list[str]
    canaries: list[str] = field(default_factory=list)
    stream: bool = False


def prefix_text(scenario: Scenario, name: str) -> str:
    p = next(p for p in scenario.shared_prefixes if p.name == name)
    if p.text is not None:
        return p.text if p.text.startswith(" ") else " " + p.text
    return words_text(draw_words(_rng(scenario.seed, scenario.name, "prefix", name), p.words))


def tenant_canaries(scenario: Scenario, tenant: str, variant: int = 0) -> list[str]:
    """A tenant's canary phrases: its secrets, planted in every one of its users' contexts. A
    counterfactual re-run that re-draws the tenant's users (variant != 0) re-draws its secrets too,
    so a leak of the secret itself shows in the counterfactual as well as in the canary check."""
    t = scenario.tenant(tenant)
    key: tuple[object, ...] = ("tenant-canaries", tenant) if variant == 0 else ("tenant-canaries", tenant, variant)
    rng = _rng(scenario.seed, scenario.name, *key)
    return [words_text(draw_words(rng, CANARY_WORDS)) for _ in range(t.secrets)]


def fishing_tail(scenario: Scenario, user: User) -> str:
    """The first words of a canary of the next tenant that has one: a model that copies from its
    context completes the canary only if that tenant's context leaked into this user's prompt."""
    names = [t.name for t in scenario.tenants]
    start = names.index(user.tenant)
    for k in range(1, len(names)):
        other = names[(start + k) % len(names)]
        canaries = tenant_canaries(scenario, other)
        if canaries:
            return words_text(canaries[0].split()[:FISHING_WORDS])
    return ""


def plan_user(scenario: Scenario, user: User, nonce: str, variant: int) -> UserPlan:
    rng = _rng(scenario.seed, scenario.name, "user", user.name, variant)
    canaries = tenant_canaries(scenario, user.tenant, variant)
    turns = []
    for t in range(user.turns):
        words = draw_words(rng, user.words_for_turn(t))
        if t == 0 and canaries:
            # Plant the canaries at evenly spread points of the first turn's private words.
            text_parts: list[str] = []
            step = max(1, len(words) // (len(canaries) + 1))
            cursor = 0
            for c in canaries:
                text_parts.append(words_text(words[cursor : cursor + step]))
                text_parts.append(c)
                cursor += step
            text_parts.append(words_text(words[cursor:]))
            turns.append("".join(text_parts))
        else:
            turns.append(words_text(words))
    if scenario.fishing:
        turns[0] += fishing_tail(scenario, user)
    system = nonce + "".join(prefix_text(scenario, p) for p in user.prefixes)
    stream = scenario.stream if user.stream is None else user.stream
    return UserPlan(user.name, user.tenant, variant, system, turns, canaries, stream)


def plan_scenario(scenario: Scenario, nonce: str, variants: dict[str, int] | None = None) -> list[UserPlan]:
    """Plans for every user; `variants` maps user -> content variant (default 0)."""
    variants = variants or {}
    return [plan_user(scenario, u, nonce, variants.get(u.name, 0)) for u in scenario.users]


def make_nonce(rng: random.Random | None = None) -> str:
    """A random per-run prefix (3 pool words: ~1.7e9 values) so no earlier run's cache is reused."""
    import secrets

    rng = rng or random.Random(secrets.randbits(64))
    return words_text(draw_words(rng, 3))


def request_seed(scenario: Scenario, user: str, turn: int) -> int:
    """Per-request sampling seed for seeded sampling: the same in a run, its re-runs and replays."""
    return _rng(scenario.sampling.seed, scenario.name, user, turn).randrange(2**31)
