"""Incidents found in a history: losses of service, one event each (docs/design.md, "Incidents").

A request is *broken* when it got no answer (connection lost, refused, timed out, a stream cut
off) or a 5xx. Broken requests are grouped into events: an event starts at the first failure seen
(its time T) and goes on, through every later failure, until some request sent after T is
answered normally (the server was serving again). A server death the stack reports joins the
last event (or is an event of its own when no request failed). Failures of requests that were in
flight while the harness itself restarted the server or acted on it (a nemesis) are excluded:
the harness caused them.

The requests *in flight* at T (sent before it, not finished before it: the failed ones
included) are the only possible culprits of an event; they are what triage replays. Requests sent
later, to a server already failing, are its victims and never its cause. One event is one
finding, however many requests failed in it.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

from harness.history.record import History, Incident, NemesisAction, Operation

TIMEOUT_MARKERS = ("Timeout", "timed out")


def is_broken(status: int | None, ok: bool = False, error: str | None = None) -> bool:
    """No answer (status None), a 5xx, or a 200 whose body broke off (the connection dropped)."""
    if status is None or status >= 500:
        return True
    return status == 200 and not ok and _transport_error(error)


def _transport_error(error: str | None) -> bool:
    head = (error or "").split(":", 1)[0]
    return head.endswith(("Error", "Timeout")) and head not in ("ValueError", "JSONDecodeError", "TypeError")


def op_broken(op: Operation) -> bool:
    return is_broken(op.status, op.ok, op.error)


def _timed_out(op: Operation) -> bool:
    return op.status is None and any(m in (op.error or "") for m in TIMEOUT_MARKERS)


@dataclass(frozen=True)
class IncidentEvent:
    """One loss of service: when it began, what it was, which requests failed in it, and which
    were in flight when it began (the culprits to replay: the failed ones first)."""

    at_s: float
    what: str  # "server-died" | "connection-lost" | "timeout" | "5xx-run"
    failed: tuple[str, ...]
    in_flight: tuple[str, ...]
    scenario: str = ""
    statuses: tuple[int | None, ...] = ()
    """The status of each failed request, in `failed`'s order."""

    @property
    def suspects(self) -> tuple[str, ...]:
        """The failed requests that were in flight at T (the bisection's hint)."""
        return tuple(i for i in self.in_flight if i in set(self.failed))


def harness_caused_times(history: History) -> list[float]:
    """When the harness itself restarted or acted on the server (its own incidents and nemeses)."""
    return sorted(e.at_s for e in history.events
                  if (isinstance(e, Incident) and e.caused_by_harness) or isinstance(e, NemesisAction))


def find_incidents(history: History) -> list[IncidentEvent]:
    """The run's loss-of-service events, oldest first (see the module docstring)."""
    caused = harness_caused_times(history)
    ops = [o for o in history.ops if not _spans(o, caused)]
    bad = sorted((o for o in ops if op_broken(o)), key=lambda o: o.complete_s)
    good = sorted((o for o in ops if not op_broken(o)), key=lambda o: o.complete_s)
    good_done = [o.complete_s for o in good]
    latest_sent = []  # latest invoke time among good requests finished by each position
    top = float("-inf")
    for o in good:
        top = max(top, o.invoke_s)
        latest_sent.append(top)
    groups: list[list[Operation]] = []
    for o in bad:
        if groups:
            start = groups[-1][0].complete_s
            k = bisect_right(good_done, o.complete_s)
            if not (k and latest_sent[k - 1] > start):  # nothing sent after T was answered yet
                groups[-1].append(o)
                continue
        groups.append([o])
    died = [e for e in history.events if isinstance(e, Incident) and e.what == "server-died"
            and not e.caused_by_harness]
    events = [_event(g, ops, last=i == len(groups) - 1 and bool(died)) for i, g in enumerate(groups)]
    if died and not events:
        events.append(IncidentEvent(at_s=died[0].at_s, what="server-died", failed=(), in_flight=()))
    return events


def _spans(op: Operation, times: list[float]) -> bool:
    i = bisect_right(times, op.complete_s)
    return bool(i) and times[i - 1] >= op.invoke_s


def _event(group: list[Operation], ops: list[Operation], *, last: bool) -> IncidentEvent:
    at = group[0].complete_s
    failed_ids = {o.op_id for o in group}
    flying = [o for o in ops if o.invoke_s < at <= o.complete_s]
    flying.sort(key=lambda o: (o.op_id not in failed_ids, o.invoke_s))
    if last:
        what = "server-died"
    elif any((o.status is None and not _timed_out(o)) or (o.status is not None and o.status < 500) for o in group):
        what = "connection-lost"
    elif any(_timed_out(o) for o in group):
        what = "timeout"
    else:
        what = "5xx-run"
    return IncidentEvent(at_s=at, what=what, failed=tuple(o.op_id for o in group),
                         in_flight=tuple(o.op_id for o in flying), scenario=group[0].scenario,
                         statuses=tuple(o.status for o in group))
