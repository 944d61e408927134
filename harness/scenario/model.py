"""The scenario: plain data describing tenants, users, conversations, sharing and schedule.

Nothing here talks to a server. Unknown fields are errors (a typo must not silently become a
default), and cross-references (a user's tenant, a shared prefix's name) are validated.
"""

from __future__ import annotations

from collections import Counter
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Endpoint = Literal["completions", "chat"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Sampling(_Strict):
    """Greedy by default; `seeded` samples with a per-request seed derived from `seed`."""

    mode: Literal["greedy", "seeded"] = "greedy"
    temperature: float = Field(0.8, gt=0, le=2)
    seed: int = 0


class SharedPrefix(_Strict):
    """A block of text several users put at the start of their context (system prompt, document)."""

    name: str = Field(min_length=1)
    kind: Literal["system", "document"] = "system"
    words: int = Field(0, ge=0, le=1500, description="length in pool words, drawn from the scenario seed")
    text: str | None = Field(None, description="literal text instead of drawn words")

    @model_validator(mode="after")
    def _one_source(self) -> SharedPrefix:
        if (self.text is None) == (self.words == 0):
            raise ValueError("give exactly one of `words` (> 0) or `text`")
        return self


class Tenant(_Strict):
    """A customer of the serving stack; its users' private content carries its canaries."""

    name: str = Field(min_length=1)
    secrets: int = Field(1, ge=0, le=8, description="canary phrases planted in each user's private context")
    adapter: str | None = Field(None, description="adapter role ('adapter-1', 'adapter-2') or a model name")
    cache_salt: str | None = None
    api_key_env: str | None = Field(None, description="environment variable holding this tenant's own API key "
                                    "(sent as `Authorization: Bearer`; the key itself is never written down)")
    headers: dict[str, str] = Field(default_factory=dict, description="extra headers on this tenant's requests "
                                    "(e.g. a gateway's tenant header); `${VAR}` in a value is read from the "
                                    "environment")


class User(_Strict):
    """A simulated user: one multi-turn conversation."""

    name: str = Field(min_length=1)
    tenant: str
    prefixes: list[str] = Field(default_factory=list, description="shared prefixes, in order")
    private_words: list[int] | int = Field(16, description="private words per turn (one value or one per turn)")
    turns: int = Field(1, ge=1, le=32)
    stream: bool | None = Field(None, description="overrides the scenario's `stream`")

    def words_for_turn(self, turn: int) -> int:
        if isinstance(self.private_words, int):
            return self.private_words
        return self.private_words[turn]

    @model_validator(mode="after")
    def _turn_lengths(self) -> User:
        if isinstance(self.private_words, list):
            if len(self.private_words) != self.turns:
                raise ValueError(f"private_words lists {len(self.private_words)} lengths for {self.turns} turns")
            if any(n < 0 for n in self.private_words):
                raise ValueError("private_words must be >= 0")
        elif self.private_words < 0:
            raise ValueError("private_words must be >= 0")
        return self


class Schedule(_Strict):
    """How turns interleave: `lockstep` (turn k of everyone, then k+1), `random` (seeded order),
    `burst` (everyone at once)."""

    concurrency: int = Field(8, ge=1, le=4096)
    interleaving: Literal["lockstep", "random", "burst"] = "random"
    seed: int = 0
    leaders_first: bool = Field(False, description=(
        "burst only: of the users that share a cache domain and a prompt start, the first goes at once and "
        "the others once it has completed, so every same-domain cache hit has a source that observably "
        "reached the cache first (docs/design.md, \"Cache accounting (black-box)\"); domains still overlap"))

    @model_validator(mode="after")
    def _leaders_need_burst(self) -> Schedule:
        if self.leaders_first and self.interleaving != "burst":
            raise ValueError("leaders_first applies to interleaving: burst only")
        return self


class Adversary(_Strict):
    """A hostile tenant probing every client-controlled field (see harness.driver.adversary)."""

    tenant: str = "mallory"
    concurrency: int = Field(4, ge=1, le=64)
    alone: bool = Field(True, description="also replay every case alone after the runs")


class Scenario(_Strict):
    """One isolation scenario; `description` says what it probes."""

    name: str = Field(min_length=1)
    description: str = ""
    endpoint: Endpoint = "completions"
    stream: bool = False
    max_tokens: int = Field(16, ge=1, le=512)
    top_logprobs: int = Field(5, ge=0, le=20)
    sampling: Sampling = Sampling()
    seed: int = 0
    expect_cross_user_hits: bool | None = Field(
        None, description="require observed cross-user cache hits (default: when a prefix is shared)"
    )
    shared_prefixes: list[SharedPrefix] = Field(default_factory=list)
    tenants: list[Tenant] = Field(min_length=1)
    users: list[User] = Field(min_length=1)
    schedule: Schedule = Schedule()
    adversary: Adversary | None = None
    fishing: bool = Field(False, description="end each user's first turn with the first words of another "
                          "tenant's canary, so a copying model completes it only if that context leaked")
    nemesis: list[str] = Field(default_factory=list, description=(
        "nemeses acting while this scenario runs (harness.nemesis.NEMESES: memory-pressure, cache-reset, "
        "adapter-churn, restart), besides those of `harness run --nemesis`"))

    @model_validator(mode="after")
    def _known_nemeses(self) -> Scenario:
        from harness.nemesis import parse_nemeses

        parse_nemeses(self.nemesis)  # a ValueError naming the unknown one
        return self

    @model_validator(mode="after")
    def _references(self) -> Scenario:
        tenants = [t.name for t in self.tenants]
        users = [u.name for u in self.users]
        prefixes = [p.name for p in self.shared_prefixes]
        for kind, names in (("tenant", tenants), ("user", users), ("shared prefix", prefixes)):
            dup = {n for n, k in Counter(names).items() if k > 1}
            if dup:
                raise ValueError(f"duplicate {kind} name(s): {sorted(dup)}")
        for u in self.users:
            if u.tenant not in tenants:
                raise ValueError(f"user {u.name!r} names unknown tenant {u.tenant!r} (known: {tenants})")
            for p in u.prefixes:
                if p not in prefixes:
                    raise ValueError(f"user {u.name!r} names unknown shared prefix {p!r} (known: {prefixes})")
        return self

    def tenant(self, name: str) -> Tenant:
        return next(t for t in self.tenants if t.name == name)

    def shares_prefixes(self, domain: dict[str, object] | None = None) -> bool:
        """True when some shared prefix is used by two or more users of one cache domain
        (`domain`: user -> its model and salt; by default every user is in one domain)."""
        seen: set[tuple[str, object]] = set()
        for u in self.users:
            key = domain.get(u.name) if domain else None
            for p in set(u.prefixes):
                if (p, key) in seen:
                    return True
                seen.add((p, key))
        return False

    def requires_cross_user_hits(self, domain: dict[str, object] | None = None) -> bool:
        if self.expect_cross_user_hits is not None:
            return self.expect_cross_user_hits
        return self.shares_prefixes(domain)

    def restricted_to(self, users: set[str]) -> Scenario:
        """The same scenario cut down to the named users (for reproducers)."""
        kept = [u for u in self.users if u.name in users]
        tenants = {u.tenant for u in kept}
        prefixes = {p for u in kept for p in u.prefixes}
        return self.model_copy(
            update={
                "users": kept,
                "tenants": [t for t in self.tenants if t.name in tenants],
                "shared_prefixes": [p for p in self.shared_prefixes if p.name in prefixes],
            }
        )
