"""The incident rule, one for every check (docs/design.md, "Incidents").

A loss of service during a run (a server death, a connection loss, a timeout, a run of 5xx) is
attributed to a tenant's input only when it is reproduced: `detect` finds the incidents and the
requests in flight at each, `triage_run` replays them (owned server: restarted as needed; a URL: only
with the explicit opt-in) and `bisect` narrows them to the smallest group that still does it;
`attribution` reads the outcome back from the history for the `availability` check. One incident
is one finding, never one violation per request that failed afterwards.
"""

from harness.incidents.attribution import Attribution, attribute, incident_summary, stopped_at, stopped_text
from harness.incidents.bisect import Triage, atriage, triage
from harness.incidents.detect import IncidentEvent, find_incidents, is_broken, op_broken

__all__ = ["Attribution", "IncidentEvent", "Triage", "atriage", "attribute", "find_incidents", "incident_summary",
           "is_broken", "op_broken", "stopped_at", "stopped_text", "triage"]
