"""One scenario's adversarial plan: the cases before, during and after the victims' main run,
within the request-count budget, and what the plan leaves uncovered."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from harness.adversary.boundary import boundary_cases
from harness.adversary.cases import (
    DEFAULT_BUDGET,
    Case,
    Target,
    fallback_target,
    identical_cases,
    spend,
    value_cases,
    within_budget,
)
from harness.adversary.confusion import Domains, confusion_cases
from harness.adversary.pairwise import pairwise_cases
from harness.adversary.schema import generation_endpoints, undriven_endpoints, why_not_driven
from harness.adversary.values import Limits
from harness.scenario.model import Scenario


@dataclass(frozen=True)
class AdversaryPlan:
    """The hostile cases of one scenario by phase, and the plan's own coverage facts."""

    before: list[Case]
    during: list[Case]
    after: list[Case]
    budget: int
    has_schema: bool
    pairs_covered: int = 0
    pairs_total: int = 0
    not_driven: list[str] = field(default_factory=list)
    """POST endpoints of the schema the adversary does not send (reported as not covered)."""
    not_driven_why: dict[str, str] = field(default_factory=dict)
    """endpoint not driven -> why (`harness.adversary.schema.why_not_driven`)."""
    declared: dict[str, list[str]] = field(default_factory=dict)
    """endpoint -> the fields the schema declares."""
    boundary_fields: int = 0
    """Numeric fields whose 4xx boundary the plan searches by bisection (beyond the default budget)."""
    boundary_candidates: int = 0
    """Numeric fields without a documented maximum (the most it could search)."""

    @property
    def cases(self) -> list[Case]:
        return self.before + self.during + self.after

    @property
    def requests(self) -> int:
        return sum(c.requests for c in self.cases)

    def summary(self) -> dict[str, Any]:
        return {"budget": self.budget, "requests_planned": self.requests, "openapi": self.has_schema,
                "pairwise_pairs_covered": self.pairs_covered, "pairwise_pairs_total": self.pairs_total,
                "endpoints_not_driven": self.not_driven, "endpoints_not_driven_why": self.not_driven_why,
                "fields": self.declared,
                "boundary_fields_searched": self.boundary_fields,
                "boundary_fields_without_maximum": self.boundary_candidates}


BOUNDARY_SHARE = 0.25
"""The share of a budget above DEFAULT_BUDGET that goes to boundary searches."""


def target_of(doc: dict[str, Any] | None, entries: list[dict[str, Any]]) -> Target:
    """The adversary's view of the target: fields from the OpenAPI document (or the fallback list
    when there is none) and the context length the model list reports."""
    ctx = next((e.get("max_model_len") for e in entries if isinstance(e.get("max_model_len"), int)), None)
    endpoints = generation_endpoints(doc)
    if not endpoints:
        fb = fallback_target()
        return Target(fb.endpoints, Limits(ctx), has_schema=False)
    return Target(endpoints, Limits(ctx))


def plan_adversary(scenario: Scenario, domains: Domains, target: Target, block: int | None,
                   budget: int | None = None, doc: dict[str, Any] | None = None, rotation: int = 0) -> AdversaryPlan:
    """Every hostile case of `scenario` within `budget` requests (default DEFAULT_BUDGET),
    deterministic for a given scenario, domains, schema and `rotation`. Rotation 0 is the default
    run's order; another rotation (`harness explore` draws one per example) shuffles the single
    values and the pairwise rows, so a long search reaches cases the default budget leaves out.
    A budget above the default gives BOUNDARY_SHARE of the excess to bisecting numeric fields'
    4xx boundaries (`harness.adversary.boundary`); the default budget's plan has none, so the
    default run's requests do not depend on a search's answers."""
    budget = DEFAULT_BUDGET if budget is None else budget
    group = scenario.adversary.concurrency if scenario.adversary else 4
    fields = {s.name for specs in target.endpoints.values() for s in specs} | {"cache_salt", "user"}
    pair_rows = max(1, budget // 2) if not rotation else max(1, budget * 2)
    pairs, covered, total = pairwise_cases(target, pair_rows)
    values = value_cases(target)
    if rotation:
        random.Random(rotation).shuffle(values)
        random.Random(rotation + 1).shuffle(pairs)
    bounds = within_budget(boundary_cases(target), int(max(0, budget - DEFAULT_BUDGET) * BOUNDARY_SHARE))
    chosen = bounds + spend({"confusion": confusion_cases(scenario, domains, fields, block),
                             "identical": identical_cases(target, group),
                             "value": values,
                             "pairwise": pairs}, budget - sum(c.requests for c in bounds))
    sent_pairs = {c.name for c in chosen if c.kind == "pair"}
    covered = _pairs_of([c for c in pairs if c.name in sent_pairs])
    return AdversaryPlan(boundary_fields=len(bounds), boundary_candidates=len(boundary_cases(target)),
                         before=[c for c in chosen if c.phase == "before"],
                         during=[c for c in chosen if c.phase == "during"],
                         after=[c for c in chosen if c.phase == "after"],
                         budget=budget, has_schema=target.has_schema, pairs_covered=covered, pairs_total=total,
                         not_driven=undriven_endpoints(doc),
                         not_driven_why={p: why_not_driven(doc, p) for p in undriven_endpoints(doc)},
                         declared={ep: [s.name for s in specs] for ep, specs in target.endpoints.items()})


def _pairs_of(rows: list[Case]) -> int:
    seen: set[tuple[str, str, str, str]] = set()
    for c in rows:
        for i, (f, _) in enumerate(c.fields):
            for g, _ in c.fields[i + 1:]:
                a, b = sorted([(f, repr(c.overrides[f])), (g, repr(c.overrides[g]))])
                seen.add((c.endpoint + a[0], a[1], b[0], b[1]))
    return len(seen)
