"""The comparison rule for two generations of the same request (docs/design.md, "Comparing").

Tokens are compared by id, never by text. At the first divergent position the divergence is
benign numeric drift only if each side's token is in the other's top logprobs and the reference
margin between the two is below the tolerance (a near-tie); otherwise it is a violation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from harness.history.record import Operation

DEFAULT_TOLERANCE = 1e-3  # nats; float32 runs measured identical to below 1e-6

Outcome = Literal["equal", "drift", "violation"]


@dataclass(frozen=True)
class Comparison:
    outcome: Outcome
    position: int | None = None
    reference_token: int | None = None
    observed_token: int | None = None
    margin: float | None = None
    reason: str = ""


def compare_tokens(ref: Operation, obs: Operation, tolerance: float = DEFAULT_TOLERANCE) -> Comparison:
    a, b = ref.output_token_ids, obs.output_token_ids
    n = min(len(a), len(b))
    pos = next((i for i in range(n) if a[i] != b[i]), None)
    if pos is None:
        if len(a) == len(b):
            return Comparison("equal")
        return Comparison(
            "violation", position=n,
            reference_token=a[n] if n < len(a) else None, observed_token=b[n] if n < len(b) else None,
            reason=f"one output is a strict prefix of the other ({len(a)} vs {len(b)} tokens)",
        )
    ta, tb = a[pos], b[pos]
    ref_top = ref.top_logprobs[pos] if pos < len(ref.top_logprobs) else {}
    obs_top = obs.top_logprobs[pos] if pos < len(obs.top_logprobs) else {}
    if tb in ref_top and ta in obs_top:
        margin = abs(ref_top[ta] - ref_top[tb])
        if margin < tolerance:
            return Comparison("drift", pos, ta, tb, margin, "near-tie: both tokens in each other's top logprobs")
        return Comparison("violation", pos, ta, tb, margin, f"reference margin {margin:.3g} >= tolerance {tolerance:g}")
    margin = abs(ref_top[ta] - ref_top[tb]) if ta in ref_top and tb in ref_top else None
    return Comparison("violation", pos, ta, tb, margin, "observed token not among the reference's top logprobs"
                      if tb not in ref_top else "reference token not among the observed top logprobs")
