"""`nemesis`: every nemesis the run asked for acted, with the counts that show it.

A run under a nemesis claims its checks held while the server was disturbed; that claim needs
evidence that the disturbance happened (docs/design.md, "Verdict": fail closed). Evidence per
nemesis, from its `NemesisAction` records: cache resets sent and taken effect, adapter loads and
the distinct weights each name held, restarts, and the server's preemption and eviction counts
under memory pressure. A nemesis that was enabled but never took effect makes the check UNKNOWN
(what it would have exercised was not exercised); n/a when no nemesis ran.
"""

from __future__ import annotations

from harness.checks.base import CheckContext, check
from harness.history.record import History, NemesisAction
from harness.verdict import CheckResult, Verdict

BOOKKEEPING = frozenset({"enabled", "initial"})
"""Actions that record a nemesis's set-up, not an act on the server."""


@check("nemesis", "every nemesis the run enabled acted on the server (counts of what it did)")
def nemesis(history: History, ctx: CheckContext) -> CheckResult:
    result = CheckResult("", Verdict.NOT_APPLICABLE)
    actions = [e for e in history.events if isinstance(e, NemesisAction)]
    if not actions:
        result.notes.append("no nemesis ran")
        return result
    enabled = list(dict.fromkeys(a.nemesis for a in actions))
    ev = result.evidence
    idle: list[str] = []
    for name in enabled:
        acts = [a for a in actions if a.nemesis == name and a.action not in BOOKKEEPING]
        took = [a for a in acts if a.took_effect]
        ev[f"{name}:acts"] = len(acts)
        ev[f"{name}:took_effect"] = len(took)
        result.exercised += len(took)
        refused = [a for a in actions if a.nemesis == name and not a.took_effect]
        if not took:
            idle.append(name)
            why = next((str(a.details.get("why") or a.details.get("response") or "") for a in refused), "")
            note = f"{name}: enabled but never took effect ({len(acts)} act(s))"
            result.notes.append(note + (f": {why}" if why else ""))
        elif refused:
            result.notes.append(f"{name}: {len(refused)} of {len(acts)} act(s) did not take effect")
    loads = [a for a in actions if a.nemesis == "adapter-churn" and a.action == "load" and a.took_effect]
    if loads:
        weights: dict[str, set[str]] = {}
        for a in actions:
            if a.nemesis == "adapter-churn" and a.took_effect and a.action == "initial":
                for n, w in dict(a.details.get("weights", {})).items():
                    weights.setdefault(str(n), set()).add(str(w))
        for a in loads:
            weights.setdefault(str(a.details.get("adapter")), set()).add(str(a.details.get("weights")))
        ev["adapter-churn:loads"] = len(loads)
        for n, ws in sorted(weights.items()):
            ev[f"adapter-churn:weights:{n}"] = len(ws)
        result.notes.append("adapter load epochs: " + ", ".join(
            f"{n} {sum(1 for a in loads if a.details.get('adapter') == n)} load(s), {len(ws)} distinct weights"
            for n, ws in sorted(weights.items())))
    pressure = [a for a in actions if a.nemesis == "memory-pressure" and a.action == "observed"]
    if pressure:
        for key in ("preemptions", "evictions"):
            ev[f"memory-pressure:{key}"] = sum(int(a.details.get(key, 0)) for a in pressure)
        reset = sum(1 for a in pressure if a.details.get("counters_reset"))
        result.notes.append(f"memory pressure: {'at least ' if reset else ''}"
                            f"{ev['memory-pressure:preemptions']} preemption(s), "
                            f"{ev['memory-pressure:evictions']} block eviction(s) over {len(pressure)} run(s)"
                            + (f" ({reset} run(s) restarted the server: counted since the last start)"
                               if reset else ""))
    resets = [a for a in actions if a.nemesis == "cache-reset" and a.action == "reset"]
    if resets:
        result.notes.append(f"cache resets: {sum(a.took_effect for a in resets)} of {len(resets)} took effect")
    result.verdict = Verdict.UNKNOWN if idle else Verdict.PASS
    return result
