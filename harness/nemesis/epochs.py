"""What the nemesis did, read back from a history for the checks (docs/design.md, "Cache accounting (black-box)").

- `clearings`: the cache resets and restarts (by the nemesis, or any restart the harness made) that
  took effect, each as the window (sent, done) in which it happened. After one, a cache hit can only
  be explained by a request that was still alive when it began: a request that had completed before
  it was sent filled blocks the clearing dropped.
  Clearings only remove explanations, never add them.
- `AdapterEpochs`: per adapter name, which weights it held from when (the `initial` record of a run
  and every load that took effect). A name loaded with other weights is a new cache domain: a
  request is in the domain of the weights its name held when it was sent.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from harness.history.record import Event, Incident, NemesisAction

CLEARING_ACTIONS = frozenset({("cache-reset", "reset"), ("restart", "restart")})


@dataclass(frozen=True)
class Clearing:
    """A cache clearing that took effect between `sent_s` and `done_s` (history clock)."""

    sent_s: float
    done_s: float
    nemesis: str


def clearings(events: list[Event]) -> list[Clearing]:
    """Every reset or restart by the nemesis that took effect, ordered by when it was done."""
    out = [Clearing(float(e.details.get("sent_s", e.at_s)), e.at_s, e.nemesis) for e in events
           if isinstance(e, NemesisAction) and e.took_effect and (e.nemesis, e.action) in CLEARING_ACTIONS]
    # A restart the harness made (the stack records it once the old process group is gone), unless
    # it is the restart nemesis's own act, recorded above (its incident falls within the act).
    acts = [c for c in out if c.nemesis == "restart"]
    out += [Clearing(e.at_s, e.at_s, "restart") for e in events
            if isinstance(e, Incident) and e.what == "restart" and e.caused_by_harness
            and not any(c.sent_s <= e.at_s <= c.done_s for c in acts)]
    return sorted(out, key=lambda c: c.done_s)


def alive_since(cleared: list[Clearing], invoke_s: float) -> float:
    """The earliest completion time a source must have to explain a hit of a request sent at
    `invoke_s`: the start of the last clearing done before then (-inf when none was)."""
    best = float("-inf")
    for c in cleared:
        if c.done_s < invoke_s:
            best = max(best, c.sent_s)
    return best


class AdapterEpochs:
    """Which weights each adapter name held over time, from the adapter-churn records."""

    def __init__(self, events: list[Event]) -> None:
        self.times: dict[str, list[float]] = {}
        self.weights: dict[str, list[str]] = {}
        self.initial: dict[str, str] = {}
        for e in events:
            if not (isinstance(e, NemesisAction) and e.nemesis == "adapter-churn" and e.took_effect):
                continue
            if e.action == "initial":
                for name, w in dict(e.details.get("weights", {})).items():
                    self._add(str(name), e.at_s, str(w))
                    self.initial.setdefault(str(name), str(w))
            elif e.action == "load":
                self._add(str(e.details["adapter"]), e.at_s, str(e.details["weights"]))

    def _add(self, name: str, at_s: float, weights: str) -> None:
        times, ws = self.times.setdefault(name, []), self.weights.setdefault(name, [])
        i = bisect.bisect_right(times, at_s)
        times.insert(i, at_s)
        ws.insert(i, weights)

    def __bool__(self) -> bool:
        return bool(self.times)

    def weights_at(self, name: str, invoke_s: float) -> str | None:
        """The weights `name` held when a request was sent at `invoke_s` (None: never churned). Before
        the first record a name holds the weights the server started with (the `initial` record)."""
        times = self.times.get(name)
        if not times:
            return None
        i = bisect.bisect_right(times, invoke_s)
        return self.weights[name][i - 1] if i else self.initial.get(name)
