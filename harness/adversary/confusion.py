"""Cache-domain confusion over the victims' own shared content.

For every cache-domain identifier of the run (tenant salts, tenant and user names, model and
adapter names), requests that carry it in every identity-bearing field and header at once, over
the content the victims of that domain actually send (their shared prefix, cut at cache-block
boundaries), with the victim's model and, for model and adapter names, that model. Sent both
before the victims' own requests of the main run (a server that files the adversary's blocks in
the victims' domain would serve them to the victims) and after (a server that lets a request
carrying the victims' identifiers read their blocks). Cache accounting, cache transparency and
the victims' outputs judge them. A request sending a victim's exact salt shares its cache by
design: `Case.victim` names that user.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.adversary.cases import IDENTITY_FIELDS, IDENTITY_HEADERS, Case
from harness.scenario.model import Scenario
from harness.scenario.render import UserPlan

DEFAULT_BLOCK = 16
"""Cache-block size in tokens where the target reports none (vLLM's default)."""


@dataclass(frozen=True)
class Domains:
    """The run's cache domains as the planner resolved them."""

    plans: list[UserPlan]
    salts: dict[str, str | None]  # user -> salt
    models: dict[str, str]  # user -> model or adapter
    adapters: list[str]


def identifiers(scenario: Scenario, d: Domains) -> list[tuple[str, str, str]]:
    """(kind, identifier, the user whose content it goes with), deterministic."""
    users = [p.user for p in d.plans]
    if not users:
        return []
    out: list[tuple[str, str, str]] = []
    for t in scenario.tenants:
        first = next((p.user for p in d.plans if p.tenant == t.name), users[0])
        out.append(("tenant", t.name, first))
    out += [("user", u, u) for u in users]
    for u in users:
        salt = d.salts.get(u)
        if salt and salt not in {i for _, i, _ in out}:
            out.append(("salt", salt, u))
    for m in sorted(set(d.models.values()) | set(d.adapters)):
        owner = next((u for u in users if d.models.get(u) == m), users[0])
        out.append(("model", m, owner))
    return out


def cuts(text: str, block: int) -> list[str]:
    """The text cut after its first block and after its last whole block (pool words are one
    token each on the embedded model; elsewhere a word cut approximates a token cut)."""
    words = text.split(" ")
    lead = 1 if words and words[0] == "" else 0  # the text starts with a space
    n = len(words) - lead
    ks = sorted({block, (n // block) * block} - {0})
    return [" ".join(words[: lead + k]) for k in ks if k <= n]


def confusion_cases(scenario: Scenario, d: Domains, fields: set[str], block: int | None,
                    phases: tuple[str, ...] = ("before", "after")) -> list[Case]:
    """Every identifier in every identity field it can go in, over its victims' content cuts."""
    by_user = {p.user: p for p in d.plans}
    salt_owner = {s: u for u, s in d.salts.items() if s}
    out: list[Case] = []
    for phase in phases:
        for kind, ident, user in identifiers(scenario, d):
            plan = by_user[user]
            models = [d.models.get(user, "")]
            if kind == "model" and ident not in models:
                models.append(ident)
            overrides = {f: ident for f in IDENTITY_FIELDS if f in fields}
            headers = {h: ident for h in IDENTITY_HEADERS if ident.isascii()}
            for ci, cut in enumerate(cuts(plan.system_text, block or DEFAULT_BLOCK)):
                for mi, model in enumerate(models):
                    body = dict(overrides)
                    if model:
                        body["model"] = model
                    out.append(Case(f"confuse-{phase}:{kind}={ident}:cut{ci}:m{mi}", "completions",
                                    body, headers, prompt=cut, victim=salt_owner.get(ident) if "cache_salt" in body
                                    else None, kind="confusion", phase=phase,
                                    fields=tuple((f, f"identity:{kind}") for f in overrides)))
    return out
