"""The comparison rule for two generations of the same request (docs/design.md, "Comparing two
generations").

Tokens are compared by id, never by text. At the first divergent position the divergence is
benign numeric drift only if each side's token is in the other's top logprobs and BOTH sides'
margins between the two tokens are below the tolerance (a near-tie seen from either side);
otherwise it is a violation. A generation that has text but no token ids cannot be compared at
all ("incomparable"), never "equal": ids are the only sound unit of comparison.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from harness.history.record import Operation

DEFAULT_TOLERANCE = 1e-3  # nats; float32 runs measured identical to below 1e-6

Outcome = Literal["equal", "drift", "violation", "incomparable"]
Divergence = Literal["outside-reference-top", "outside-observed-top", "own-token-missing", "reference-margin",
                     "observed-margin", "near-tie", "truncated", ""]
"""Which rule a divergence met: the kind of divergence a known finding's signature names."""


@dataclass(frozen=True)
class Comparison:
    outcome: Outcome
    position: int | None = None
    reference_token: int | None = None
    observed_token: int | None = None
    margin: float | None = None
    """The reference side's margin between the two tokens (None where it cannot be read)."""
    reason: str = ""
    observed_margin: float | None = None
    """The observed side's margin between the two tokens (None where it cannot be read)."""
    tokens_compared: int = 0
    """Positions shown equal: the whole output when equal, else the ones before the divergence."""
    kind: Divergence = ""


def _without_ids(op: Operation) -> bool:
    return not op.output_token_ids and bool(op.output_text)


def _margin(top: dict[int, float], a: int, b: int) -> float | None:
    return abs(top[a] - top[b]) if a in top and b in top else None


def compare_tokens(ref: Operation, obs: Operation, tolerance: float = DEFAULT_TOLERANCE) -> Comparison:
    if _without_ids(ref) or _without_ids(obs):
        side = "reference" if _without_ids(ref) else "observed"
        return Comparison("incomparable", reason=f"the {side} output has text but no token ids")
    a, b = ref.output_token_ids, obs.output_token_ids
    n = min(len(a), len(b))
    pos = next((i for i in range(n) if a[i] != b[i]), None)
    if pos is None:
        if len(a) == len(b):
            return Comparison("equal", tokens_compared=n)
        return Comparison(
            "violation", position=n,
            reference_token=a[n] if n < len(a) else None, observed_token=b[n] if n < len(b) else None,
            reason=f"one output is a strict prefix of the other ({len(a)} vs {len(b)} tokens)", tokens_compared=n,
            kind="truncated",
        )
    ta, tb = a[pos], b[pos]
    ref_top = ref.top_logprobs[pos] if pos < len(ref.top_logprobs) else {}
    obs_top = obs.top_logprobs[pos] if pos < len(obs.top_logprobs) else {}
    ref_margin, obs_margin = _margin(ref_top, ta, tb), _margin(obs_top, ta, tb)

    def verdict(outcome: Outcome, kind: Divergence, reason: str) -> Comparison:
        return Comparison(outcome, pos, ta, tb, ref_margin, reason, obs_margin, pos, kind)

    if tb not in ref_top:
        return verdict("violation", "outside-reference-top", "observed token not among the reference's top logprobs")
    if ta not in obs_top:
        return verdict("violation", "outside-observed-top", "reference token not among the observed top logprobs")
    if ref_margin is None or obs_margin is None:
        return verdict("violation", "own-token-missing",
                       "a side's own token is missing from its top logprobs, so its margin is unknown")
    if ref_margin >= tolerance:
        return verdict("violation", "reference-margin", f"reference margin {ref_margin:.3g} >= tolerance {tolerance:g}")
    if obs_margin >= tolerance:
        return verdict("violation", "observed-margin", f"observed margin {obs_margin:.3g} >= tolerance {tolerance:g}")
    return verdict("drift", "near-tie",
                   "near-tie: both tokens in each other's top logprobs, both margins below the tolerance")
