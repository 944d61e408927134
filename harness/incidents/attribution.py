"""The incident rule's decision: what each incident is attributed to, from the history alone.

An incident is attributed to a tenant's input only when a replay reproduced it (docs/design.md,
"Incidents"), and not by chance: a replay of the group took the server down, or the group's
CONFIRMATIONS further replays all reproduced it (a server that fails at random must not get its
failures pinned on a request), and a plain request of the run replayed alone afterwards (the
control) did not fail too (a target refusing everyone says nothing about the group). The smallest
group of requests whose concurrent replay reproduced it is the finding's reproducer; it is
1-minimal when the history shows that each group without one of its members was replayed and did
not reproduce. An incident that was not
replayed, or whose replays never reproduced it, is attributable to no input: the check that owns
it is UNKNOWN, never FAIL, and never PASS.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.history.record import History, Operation, TriageReplay
from harness.incidents.detect import IncidentEvent, find_incidents
from harness.incidents.triage_run import CONFIRMATIONS

SAME_TIME_S = 1e-6


@dataclass(frozen=True)
class Attribution:
    """One incident and what its replays showed."""

    event: IncidentEvent
    replays: tuple[TriageReplay, ...]
    group: tuple[str, ...] | None
    """The smallest replayed group that reproduced it (None: none did)."""
    minimal: bool
    """The history shows `group` is 1-minimal (each group without one member did not reproduce)."""

    @property
    def reproduced(self) -> bool:
        return self.group is not None

    @property
    def why_not(self) -> str:
        """Why it is not attributed (for a report line)."""
        notes = [r.note for r in self.replays if not r.op_ids and r.note]
        control = next((r for r in self.replays if r.control and r.reproduced), None)
        if control is not None:
            return (f"a plain request of the run ({control.op_ids[0]}) replayed alone after the group's confirmations "
                    f"failed too ({control.note}): the target was refusing everyone, not reacting to the group")
        tried = [r for r in self.replays if r.op_ids]
        if tried:
            return f"{len(tried)} replay(s) of the requests in flight did not reproduce it" + (
                f" ({notes[-1]})" if notes else "")
        return notes[-1] if notes else "it was not replayed"


def attribute(history: History) -> list[Attribution]:
    """Every incident of `history` with its replays and attribution."""
    replays = [e for e in history.events if isinstance(e, TriageReplay)]
    out = []
    for ev in find_incidents(history):
        mine = tuple(r for r in replays if abs(r.incident_at_s - ev.at_s) <= SAME_TIME_S)
        refused = any(r.control and r.reproduced for r in mine)  # a plain request alone failed too
        hits = [r for r in mine if r.reproduced and r.op_ids and not r.control and not refused
                and _confirmed(r.op_ids, mine)]
        group = tuple(min(reversed(hits), key=lambda r: len(r.op_ids)).op_ids) if hits else None
        out.append(Attribution(ev, mine, group, group is not None and _one_minimal(group, mine)))
    return out


def _confirmed(op_ids: list[str], replays: tuple[TriageReplay, ...]) -> bool:
    """The group's failure cannot be chance: a replay of it took the server down, or it was
    replayed CONFIRMATIONS more times after the bisection and reproduced every time."""
    mine = [r for r in replays if set(r.op_ids) == set(op_ids)]
    if any(r.reproduced and r.server_down for r in mine):
        return True
    confirming = [r for r in mine if r.confirming]
    return len(confirming) >= CONFIRMATIONS and all(r.reproduced for r in confirming)


def _one_minimal(group: tuple[str, ...], replays: tuple[TriageReplay, ...]) -> bool:
    if len(group) == 1:
        return True
    failed_to = {frozenset(r.op_ids) for r in replays if not r.reproduced and r.op_ids}
    return all(frozenset(group) - {x} in failed_to for x in group)


def stopped_at(history: History, error: str | None) -> dict[str, object] | None:
    """Where a run that stopped early stopped: the scenario and run being driven, how many of its
    requests were recorded (the op index it stopped after), the last request, and why."""
    if not error:
        return None
    runs = history.runs
    ops: list[Operation] = history.ops
    where: dict[str, object] = {"reason": error.splitlines()[0] if error.strip() else error}
    if runs:
        last = runs[-1]
        mine = history.ops_of(last.scenario, last.run)
        where.update(scenario=last.scenario, run=last.run, op_index=len(mine))
    if ops:
        where["last_op"] = max(ops, key=lambda o: o.complete_s).op_id
    where.update(requests_recorded=len(ops))
    return where


def stopped_text(where: dict[str, object] | None) -> str:
    """`stopped_at` in one line."""
    if not where:
        return ""
    at = (f"scenario {where['scenario']}, run {where['run']}, after op {where['op_index']}"
          if "scenario" in where else "before any run began")
    return f"stopped at {at} ({where.get('requests_recorded', 0)} requests recorded): {where['reason']}"


def incident_summary(history: History) -> list[dict[str, object]]:
    """Every incident in a few plain fields (report.json's metadata "incidents"): one entry per
    loss of service, however many requests failed in it."""
    start = min((o.invoke_s for o in history.ops), default=0.0)
    return [{"what": a.event.what, "at_s": round(a.event.at_s - start, 3), "scenario": a.event.scenario,
             "failed": len(a.event.failed), "in_flight": len(a.event.in_flight), "reproduced": a.reproduced,
             "group": list(a.group or ()), "minimal": a.minimal,
             "replays": sum(1 for r in a.replays if r.op_ids),
             **({} if a.reproduced else {"why_not": a.why_not})} for a in attribute(history)]
