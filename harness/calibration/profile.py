"""The target's own noise, measured from its A/A runs (docs/design.md, "Comparing two generations").

An A/A run ("aa-N", role calibration) repeats a scenario's main run with the same content and
schedule. Comparing each with the main run, conversation by conversation and turn by turn up to
the first divergence (the unit the counterfactual check counts), gives the `NoiseProfile`: how
many conversations diverged, and at each divergence both sides' margins between the two tokens
and the observed token's rank in the reference's top logprobs. A divergence whose tokens are in
each other's top logprobs is near-tie shaped (what numerics can do); one that is not is
*unexplained* and never widens the margin bound.

The profile decides how outputs are judged: a target whose A/A runs were identical is
deterministic and keeps the exact rule (`DEFAULT_TOLERANCE`); otherwise the near-tie bound is
`MARGIN_SLACK` times the largest A/A margin (never below the tolerance), and the counterfactual
divergence rate is tested against the A/A rate (`harness.calibration.stats`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from harness.checks.compare import compare_tokens
from harness.history.record import History, Operation, Role

MARGIN_SLACK = 2.0
"""The near-tie bound is this many times the largest margin the A/A runs showed at a divergence."""
CALIBRATION_REPEATS = 3
"""A/A repeats per scenario on a target that has shown noise (one when the first is identical)."""


@dataclass
class ConversationWalk:
    """One conversation compared turn by turn up to its first divergence."""

    compared: bool = False
    """Its first turn was compared (both requests answered, both with token ids)."""
    outcome: str = "equal"
    """"equal", "drift" (near-tie shaped), "violation" (any other divergence) or "incomparable"."""
    margin: float | None = None
    observed_margin: float | None = None
    rank: int | None = None
    op_ids: tuple[str, str] | None = None


def rank_in(top: dict[int, float], token: int | None) -> int | None:
    """1-based rank of `token` in a position's top logprobs (None: not there)."""
    if token is None or token not in top:
        return None
    return 1 + sum(1 for v in top.values() if v > top[token])


def walk(ref: list[Operation], obs: list[Operation]) -> ConversationWalk:
    """Compare one conversation's turns (in order) up to the first divergence, with no tolerance:
    every divergence whose tokens are in each other's top logprobs comes out "drift"."""
    w = ConversationWalk()
    for r, o in zip(ref, obs, strict=False):
        if not (r.ok and o.ok):
            return w
        cmp = compare_tokens(r, o, math.inf)
        if cmp.outcome == "incomparable":
            w.outcome = "incomparable"
            return w
        w.compared = True
        if cmp.outcome == "equal":
            continue
        w.outcome, w.margin, w.observed_margin = cmp.outcome, cmp.margin, cmp.observed_margin
        pos = cmp.position if cmp.position is not None else 0
        w.rank = rank_in(r.top_logprobs[pos] if pos < len(r.top_logprobs) else {}, cmp.observed_token)
        w.op_ids = (r.op_id, o.op_id)
        return w
    return w


def identical(main: list[Operation], repeat: list[Operation]) -> bool:
    """Every conversation of the repeat answered with exactly the main run's tokens (a failed or
    incomparable request is not identical)."""
    a, b = History.conversations(main), History.conversations(repeat)
    if set(a) != set(b) or not a:
        return False
    for user, ops in a.items():
        other = b[user]
        if len(ops) != len(other):
            return False
        for r, o in zip(ops, other, strict=True):
            if not (r.ok and o.ok) or not r.output_token_ids or r.output_token_ids != o.output_token_ids:
                return False
    return True


@dataclass
class NoiseProfile:
    """What the A/A runs showed (empty when the run had none)."""

    repeats: int = 0
    """A/A runs driven (all scenarios)."""
    conversations: int = 0
    """Conversations compared (main vs each repeat)."""
    diverged: int = 0
    """Of those, conversations whose outputs diverged at all."""
    unexplained: int = 0
    """Divergences numerics cannot explain (a token outside the other's top logprobs, a truncation)."""
    margins: list[float] = field(default_factory=list)
    """Both sides' margins at the near-tie shaped divergences."""
    ranks: list[int] = field(default_factory=list)
    """The observed token's rank in the reference's top logprobs at each divergence."""
    requests: int = 0
    wall_s: float = 0.0
    examples: list[tuple[str, str]] = field(default_factory=list)
    """(main op, A/A op) of the first few divergences."""

    @property
    def calibrated(self) -> bool:
        """Some A/A comparison could be made."""
        return self.conversations > 0

    @property
    def deterministic(self) -> bool:
        """Every A/A conversation was identical to the main run's."""
        return self.calibrated and self.diverged == 0

    @property
    def rate(self) -> float:
        return self.diverged / self.conversations if self.conversations else 0.0

    def margin_bound(self, tolerance: float) -> float:
        """The near-tie bound: the tolerance on a deterministic target, else MARGIN_SLACK times the
        largest A/A margin (never below the tolerance)."""
        if not self.margins:
            return tolerance
        return max(tolerance, MARGIN_SLACK * max(self.margins))

    def to_json(self, tolerance: float) -> dict[str, Any]:
        q = _quantiles(self.margins)
        return {"repeats": self.repeats, "conversations": self.conversations, "diverged": self.diverged,
                "rate": round(self.rate, 4), "unexplained": self.unexplained, "deterministic": self.deterministic,
                "calibrated": self.calibrated, "margin_bound": self.margin_bound(tolerance),
                "margin_quantiles": q, "max_rank": max(self.ranks, default=None),
                "requests": self.requests, "wall_s": round(self.wall_s, 1)}


def _quantiles(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {}
    s = sorted(xs)

    def at(p: float) -> float:
        return round(s[min(len(s) - 1, int(p * (len(s) - 1) + 0.5))], 6)

    return {"min": round(s[0], 6), "median": at(0.5), "p90": at(0.9), "max": round(s[-1], 6)}


def noise_profile(history: History) -> NoiseProfile:
    """The profile of every A/A run in the history, compared with its scenario's main run."""
    cached: NoiseProfile | None = history.__dict__.get("_noise")
    key = (id(history.records), len(history.records))
    if cached is not None and history.__dict__.get("_noise_key") == key:
        return cached
    p = NoiseProfile()
    for info in history.runs:
        if Role.of_run(info.run) is not Role.CALIBRATION:
            continue
        ops = history.ops_of(info.scenario, info.run)
        p.repeats += 1
        p.requests += len(ops)
        if ops:
            p.wall_s += max(o.complete_s for o in ops) - min(o.invoke_s for o in ops)
        main = History.conversations(history.ops_of(info.scenario, "main"))
        rep = History.conversations(ops)
        for user in sorted(info.variants):
            w = walk(main.get(user, []), rep.get(user, []))
            if not w.compared:
                continue
            p.conversations += 1
            if w.outcome == "equal":
                continue
            p.diverged += 1
            if w.op_ids and len(p.examples) < 5:
                p.examples.append(w.op_ids)
            if w.outcome == "drift" and w.margin is not None and w.observed_margin is not None:
                p.margins += [w.margin, w.observed_margin]
                if w.rank is not None:
                    p.ranks.append(w.rank)
            else:
                p.unexplained += 1
    history.__dict__["_noise"], history.__dict__["_noise_key"] = p, key
    return p
