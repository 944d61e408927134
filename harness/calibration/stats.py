"""The exact statistics of judging against the noise (docs/design.md, "Comparing two generations").

The counterfactual divergence rate is compared with the A/A rate by Fisher's exact test, one-sided
(is the counterfactual rate greater?), at `ALPHA`. Its power at a given run size is computed
exactly, by summing the two binomial laws over the test's rejection region, and
`min_detectable_rate` inverts it: the smallest extra divergence rate (a leak's) that the run sees
with probability `POWER`. Everything here is exact; nothing is simulated.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.stats import binom, hypergeom

ALPHA = 0.01
"""The one-sided test's level: the chance that pure noise makes a run FAIL by the rate test."""
POWER = 0.8
"""The power at which a leak rate counts as detectable."""


def fisher_greater(k1: int, n1: int, k0: int, n0: int) -> float:
    """One-sided p-value of Fisher's exact test that rate k1/n1 exceeds rate k0/n0."""
    if n1 <= 0 or k1 <= 0:
        return 1.0
    return float(hypergeom.sf(k1 - 1, n1 + n0, k1 + k0, n1))


@lru_cache(maxsize=64)
def _critical(n1: int, n0: int, alpha: float) -> tuple[int, ...]:
    """For each total t of divergences (both groups), the smallest k1 that the test rejects at;
    n1 + 1 where none does."""
    m = n1 + n0
    ks = np.arange(n1 + 1)
    out = []
    for t in range(m + 1):
        pv = hypergeom.sf(ks - 1, m, t, n1)
        ok = np.nonzero((pv <= alpha) & (ks <= t))[0]
        out.append(int(ok[0]) if ok.size else n1 + 1)
    return tuple(out)


def power(n1: int, n0: int, p0: float, p1: float, alpha: float = ALPHA) -> float:
    """The chance that the test rejects when the counterfactual rate is p1 and the A/A rate p0."""
    if n1 <= 0 or n0 <= 0:
        return 0.0
    crit = np.asarray(_critical(n1, n0, alpha))
    b1 = binom.pmf(np.arange(n1 + 1), n1, p1)
    b0 = binom.pmf(np.arange(n0 + 1), n0, p0)
    k1 = np.arange(n1 + 1)[:, None]
    k0 = np.arange(n0 + 1)[None, :]
    reject = k1 >= crit[k1 + k0]
    return float((b1[:, None] * b0[None, :] * reject).sum())


def min_detectable_rate(n1: int, n0: int, p0: float, alpha: float = ALPHA, target: float = POWER) -> float | None:
    """The smallest extra divergence rate d (counterfactual rate p0 + d) that the test detects with
    probability `target`; None when even a counterfactual rate of 1 would not be."""
    if power(n1, n0, p0, 1.0, alpha) < target:
        return None
    lo, hi = p0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if power(n1, n0, p0, mid, alpha) >= target:
            hi = mid
        else:
            lo = mid
    return hi - p0


def any_change_rate(n: int, target: float = POWER) -> float | None:
    """Under the exact rule (a deterministic target), any changed conversation is a violation: the
    smallest per-conversation change rate seen with probability `target` among n conversations."""
    if n <= 0:
        return None
    return float(1.0 - (1.0 - target) ** (1.0 / n))
