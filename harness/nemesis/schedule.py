"""The nemesis schedule: which act happens before which operation of a run.

A step is keyed by operation index (the position in the run's launch order), never by wall-clock
time, so the counterfactual re-runs, which launch the same operations in the same order, see the
same acts at the same points (docs/design.md, "Nemeses"). The schedule is drawn
from the scenario's seed and the run's operation count only: the same scenario gives the same
schedule in every run and on every replay.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

RESETS_PER_OPS = 6
"""cache-reset: one reset per this many operations (at least one)."""


@dataclass(frozen=True)
class Step:
    """One act: before operation `index` is launched, nemesis `nemesis` does `action`."""

    index: int
    nemesis: str
    action: str
    args: dict[str, str] = field(default_factory=dict)
    drain: bool = False
    """Wait for every request in flight to finish first (acts whose effect on outputs must fall
    between two known operations, so that every run sees it at the same point)."""


def build_schedule(names: tuple[str, ...], n_ops: int, seed: int, adapters: tuple[str, ...] = ()) -> list[Step]:
    """The steps of every nemesis in `names` for a run of `n_ops` operations, in index order.

    - cache-reset: `n_ops // RESETS_PER_OPS` (at least 1) resets at distinct seeded indices in
      [1, n_ops), so requests are in flight when each is sent;
    - adapter-churn (needs two adapters): at a third of the run, the first adapter's name is given
      the second adapter's weights (another tenant's adapter under a name the first tenant used)
      and the second adapter is unloaded and loaded again; at two thirds the first name gets its own
      weights back. Drained, so every run sees the swap between the same two operations;
    - restart: one restart at the middle of the run, drained;
    - memory-pressure acts through the server's configuration: no steps.
    """
    steps: list[Step] = []
    if n_ops < 2:
        return steps
    if "cache-reset" in names:
        rng = random.Random(f"{seed}:cache-reset:{n_ops}")
        count = min(n_ops - 1, max(1, n_ops // RESETS_PER_OPS))
        steps += [Step(i, "cache-reset", "reset") for i in sorted(rng.sample(range(1, n_ops), count))]
    if "adapter-churn" in names and len(adapters) >= 2:
        a, b = adapters[0], adapters[1]
        first, second = max(1, n_ops // 3), max(1, (2 * n_ops) // 3)
        steps += [Step(first, "adapter-churn", "swap", {"adapter": a, "weights_of": b}, drain=True),
                  Step(first, "adapter-churn", "swap", {"adapter": b, "weights_of": b}, drain=True),
                  Step(second, "adapter-churn", "swap", {"adapter": a, "weights_of": a}, drain=True)]
    if "restart" in names:
        steps.append(Step(max(1, n_ops // 2), "restart", "restart", drain=True))
    return sorted(steps, key=lambda s: s.index)


def adapter_state(steps: list[Step], index: int, adapters: tuple[str, ...]) -> dict[str, str]:
    """adapter name -> whose weights it holds when operation `index` is launched (every step at or
    before `index` applied, from each name holding its own weights)."""
    state = {a: a for a in adapters}
    for s in steps:
        if s.index > index:
            break
        if s.nemesis == "adapter-churn" and s.action == "swap":
            state[s.args["adapter"]] = s.args["weights_of"]
    return state
