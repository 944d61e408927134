"""The incident rule's replay step, run by the engine after driving and before the checks.

For every incident of the history (`detect.find_incidents`), when replays are allowed (the harness
owns the server, or the user opted in with `--replay-incidents` for a URL), restart or wait for
the server, replay the requests in flight when it began, concurrently, and bisect them down to the
smallest group that still reproduces it (`bisect.atriage`). Every replay becomes a `TriageReplay`
record; an incident that is not replayed gets one empty `TriageReplay` saying why. The
`availability` check then reads these (`attribution.attribute`): reproduced is a FAIL naming the
group; not reproduced is UNKNOWN. A group whose replays left the server up (a 5xx, a dropped
connection) is replayed CONFIRMATIONS more times: a server that fails at random would otherwise
get its failures pinned on whichever request a lucky bisection ended with. Then one plain request
of the run is replayed alone (the control): if it fails too, the target was refusing everyone
(vllm-router's circuit breakers, once open, answer every tenant 503 for a minute), and no
replay of the group says anything about the group.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

from harness.driver.sink import Sink
from harness.history.record import History, Operation, TriageReplay
from harness.incidents.bisect import DEFAULT_MAX_REPLAYS, atriage
from harness.incidents.detect import IncidentEvent, find_incidents
from harness.incidents.replay import Outcome, Replayer, ServerGone, truncated
from harness.stacks.base import Stack

CONFIRMATIONS = 2
"""Further replays of a bisected group that did not take the server down; each must reproduce."""

NOT_OPTED_IN = ("the harness does not own this server, and replaying requests at it needs the explicit opt-in "
                "--replay-incidents")


@dataclass(frozen=True)
class TriageBudget:
    """How much replaying one run may spend (deterministic in count; the time bound is a backstop)."""

    per_incident: int = DEFAULT_MAX_REPLAYS
    total: int = 256
    seconds: float = 600.0


def may_replay(stack: Stack, opt_in: bool) -> str | None:
    """None when replays are allowed against `stack`; else why not."""
    return None if stack.traits.owned or opt_in else NOT_OPTED_IN


class _Spent(Exception):
    """The run's triage budget ran out in the middle of a bisection."""


async def triage_incidents(history: History, stack: Stack, sink: Sink, *, opt_in: bool = False,
                           timeout_s: float = 60.0, budget: TriageBudget | None = None) -> list[IncidentEvent]:
    """Replay and bisect every incident of `history` (see the module docstring); returns them."""
    budget = budget or TriageBudget()
    events = find_incidents(history)
    if not events:
        return events
    why_not = may_replay(stack, opt_in)
    ops = {o.op_id: o for o in history.ops}
    replayer = Replayer(stack, timeout_s=timeout_s)
    deadline = time.monotonic() + budget.seconds
    spent = 0
    gone: str | None = None
    for ev in events:
        reason = why_not or gone
        if reason is None and not ev.in_flight:
            reason = "no request was in flight when it began"
        if reason is None and spent >= budget.total:
            reason = f"the run's triage budget ({budget.total} replays) was spent on earlier incidents"
        if reason is not None:
            sink.append(TriageReplay(ev.at_s, [], False, note=f"not replayed: {reason}"))
            continue
        group = [ops[i] for i in ev.in_flight if i in ops]
        hint = [k for k, o in enumerate(group) if o.op_id in set(ev.failed)]

        downed: set[frozenset[str]] = set()

        async def replay(sub: list[Operation], ev: IncidentEvent = ev, confirming: bool = False,
                         downed: set[frozenset[str]] = downed, control: bool = False) -> bool:
            nonlocal spent
            if spent >= budget.total or time.monotonic() > deadline:
                raise _Spent
            spent += 1
            outcomes, up = await replayer.fire(sub)
            reproduced = any(o.broken for o in outcomes) or not up
            if not up:
                downed.add(frozenset(o.op_id for o in sub))
            sink.append(TriageReplay(ev.at_s, [o.op_id for o in sub], reproduced, note=_note(outcomes, up, sub),
                                     server_down=not up, confirming=confirming, control=control))
            return reproduced

        try:
            found = await atriage(group, replay, hint=hint, max_replays=budget.per_incident, attempts=3)
            if found.group and frozenset(o.op_id for o in found.group) not in downed:
                confirmed = True
                for _ in range(CONFIRMATIONS):
                    if not await replay(found.group, confirming=True):
                        confirmed = False
                        break
                plain = control_request(history, found.group)
                if confirmed and plain is not None:
                    await replay([plain], control=True)
        except _Spent:
            sink.append(TriageReplay(ev.at_s, [], False, note="bisection stopped: the run's triage budget was spent"))
        except ServerGone as exc:
            gone = f"the server did not come back for replays: {exc}"
            sink.append(TriageReplay(ev.at_s, [], False, note=f"bisection stopped: {gone}"))
    return events


def control_request(history: History, group: list[Operation]) -> Operation | None:
    """A plain request to replay alone after a group's confirmations: one of the harness's own
    that succeeded in the run, not in the group, preferably of the group's scenario and endpoint.
    If it fails too, the target is refusing everyone (a router whose circuit breakers are all
    open, an overloaded server), and the group is not the cause."""
    taken = {o.op_id for o in group}
    plain = [o for o in history.ops if o.ok and not o.role.hostile and o.op_id not in taken]
    first = group[0]
    return next((o for o in plain if o.scenario == first.scenario and o.endpoint == first.endpoint),
                plain[0] if plain else None)


def _note(outcomes: list[Outcome], up: bool, sub: list[Operation]) -> str:
    """The replay's result in words: statuses seen (none = no answer), server state, exactness."""
    statuses = Counter("none" if o.status is None else str(o.status) for o in outcomes)
    parts = [f"statuses {dict(sorted(statuses.items()))}",
             "server answered afterwards" if up else "server down afterwards"]
    if any(truncated(o) for o in sub):
        parts.append("inexact: the history shortened a long string of a request body")
    return "; ".join(parts)
