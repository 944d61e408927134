"""What the adversarial tenant covered, from the history alone: endpoints x fields x value
classes x concurrency tried, the statuses seen, how many hostile requests overlapped a victim's
request in time, and what the plan left out (fields never sent, endpoints not driven, pairwise
pairs not covered). The plan's own facts travel in the adversary's `RunInfo` note
(`plan_note` / `plan_of`); a scenario planned without an OpenAPI document is reported as such,
and `availability` cannot PASS on it (`missing_schema`, a row of `harness.evidence`). The wall
time of the hostile requests and of the whole scenario are reported beside the coverage."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from typing import Any

from harness.history.record import History, Operation, Role

NOTE_PREFIX = "adversary plan: "
_COPY = re.compile(r"#x(\d+)(?:\.\d+)?$")


def plan_note(summary: dict[str, Any]) -> str:
    return NOTE_PREFIX + json.dumps(summary, sort_keys=True)


def plan_of(history: History, scenario: str) -> dict[str, Any] | None:
    """The adversary's plan summary recorded for `scenario` (None: none recorded)."""
    for r in history.runs:
        if r.scenario == scenario and r.run == Role.ADVERSARY.value and r.note.startswith(NOTE_PREFIX):
            out = json.loads(r.note[len(NOTE_PREFIX):])
            return out if isinstance(out, dict) else None
    return None


def missing_schema(history: History) -> list[str]:
    """Scenarios whose adversary had no OpenAPI document to draw from (it then tries only a few
    fields every OpenAI-compatible server takes): such a run has not shown availability."""
    return sorted({r.scenario for r in history.runs if r.run == Role.ADVERSARY.value
                   and (plan_of(history, r.scenario) or {}).get("openapi") is False})


def parse(op: Operation) -> dict[str, Any]:
    """An adversarial op's case: kind, endpoint, (field, class) parts, identical-group size."""
    name = op.op_id.split("/", 2)[2] if op.op_id.count("/") >= 2 else op.op_id
    m = _COPY.search(name)
    group = int(m.group(1)) if m else 1
    name = _COPY.sub("", name)
    endpoint = "chat" if name.endswith("@chat") else "completions"
    name = name.removesuffix("@chat")
    if name.startswith("confuse-"):
        return {"kind": "confusion", "endpoint": endpoint, "parts": [("identity", name.split(":", 1)[1].split("=")[0])],
                "group": group, "phase": name.split(":", 1)[0].removeprefix("confuse-")}
    kind = "header" if name.startswith("header:") else "pair" if "+" in name else "identical" if m else "value"
    parts = []
    for part in name.split("+"):
        field, _, tag = part.partition("=")
        parts.append((field, tag.split(":", 1)[0]))
    if kind == "value" and parts[0][1] == "bisect":
        kind = "boundary"
    return {"kind": kind, "endpoint": endpoint, "parts": parts, "group": group, "phase": "during"}


def summarize(history: History) -> dict[str, Any]:
    """The coverage report (report.json's `adversary`), per scenario with an adversary."""
    out: dict[str, Any] = {}
    hostile = [o for o in history.ops if o.role is Role.ADVERSARY]
    for scenario in sorted({o.scenario for o in hostile}):
        ops = [o for o in hostile if o.scenario == scenario]
        victims = sorted((o.invoke_s, o.complete_s) for o in history.ops
                          if o.scenario == scenario and o.role in (Role.MAIN, Role.COUNTERFACTUAL))
        table: dict[str, dict[str, dict[str, Counter[str]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(
            Counter)))
        kinds: Counter[str] = Counter()
        statuses: Counter[str] = Counter()
        company: Counter[str] = Counter()
        confusion: Counter[str] = Counter()
        by_endpoint: dict[str, Counter[str]] = defaultdict(Counter)
        probes: dict[str, dict[str, list[Operation]]] = defaultdict(lambda: defaultdict(list))
        overlapping = 0
        for o in ops:
            case = parse(o)
            kinds[case["kind"]] += 1
            if case["kind"] == "boundary":
                probes[case["endpoint"]][case["parts"][0][0]].append(o)
            if case["kind"] == "confusion":
                confusion[case["phase"]] += 1
                confusion["identity:" + case["parts"][0][1]] += 1
            status = str(o.status) if o.status is not None else "none"
            statuses[status] += 1
            by_endpoint[case["endpoint"]][status] += 1
            for field, klass in case["parts"]:
                table[case["endpoint"]][field][klass][status] += 1
            others = sum(1 for p in ops if p is not o and p.invoke_s < o.complete_s and p.complete_s > o.invoke_s)
            company[_bucket(others + 1)] += 1
            if any(a < o.complete_s and b > o.invoke_s for a, b in victims):
                overlapping += 1
        plan = plan_of(history, scenario) or {}
        declared = plan.get("fields") or {}
        not_sent = {ep: sorted(set(names) - set(table.get(ep, {}))) for ep, names in declared.items()}
        everything = [o for o in history.ops if o.scenario == scenario]
        out[scenario] = {
            "requests": len(ops),
            "wall_s": _span(ops),
            "scenario_wall_s": _span(everything),
            "endpoints": {ep: _endpoint_row(fs, declared.get(ep, []), by_endpoint[ep])
                          for ep, fs in sorted(table.items())},
            "confusion": dict(sorted(confusion.items())),
            "boundaries": {ep: {f: _boundary(f, found) for f, found in sorted(fs.items())}
                           for ep, fs in sorted(probes.items())},
            "by_kind": dict(sorted(kinds.items())),
            "statuses": dict(sorted(statuses.items())),
            "concurrency": dict(sorted(company.items())),
            "victim_overlap": round(overlapping / len(ops), 3) if ops else 0.0,
            "victim_overlap_requests": overlapping,
            "table": {ep: {f: {k: dict(s) for k, s in ks.items()} for f, ks in fs.items()} for ep, fs in table.items()},
            "fields_not_sent": {ep: names for ep, names in not_sent.items() if names},
            "plan": {k: v for k, v in plan.items() if k != "fields"},
        }
    return out


def _boundary(name: str, probes: list[Operation]) -> dict[str, Any]:
    """What a field's boundary search found: the largest value accepted, the smallest refused
    with a 4xx (None: none), and how many probes it took."""
    def values(ok: bool) -> list[float]:
        return [o.request[name] for o in probes if isinstance(o.request.get(name), (int, float))
                and o.status is not None and o.status < 500 and (o.status < 400) is ok]

    accepted, refused = values(True), values(False)
    return {"probes": len(probes), "accepted_max": max(accepted, default=None),
            "refused_min": min(refused, default=None),
            "broken": sum(1 for o in probes if o.status is None or o.status >= 500)}


def _span(ops: list[Operation]) -> float:
    """Seconds from the first request sent to the last answer (0 for none)."""
    return round(max(o.complete_s for o in ops) - min(o.invoke_s for o in ops), 1) if ops else 0.0


def _endpoint_row(fields: dict[str, dict[str, Counter[str]]], declared: list[str],
                  statuses: Counter[str]) -> dict[str, Any]:
    """One endpoint's line of the coverage table: fields tried (of those declared; headers and
    domain confusion apart), field values sent per value class, requests by status."""
    classes: Counter[str] = Counter()
    for name, by_class in fields.items():
        if name == "identity":  # domain confusion: reported on its own
            continue
        for klass, by_status in by_class.items():
            classes[klass] += sum(by_status.values())
    body = [f for f in fields if not f.startswith("header:") and f != "identity"]
    return {"fields_tried": len(body), "fields_declared": len(declared),
            "headers_tried": sum(1 for f in fields if f.startswith("header:")),
            "values_by_class": dict(sorted(classes.items())), "statuses": dict(sorted(statuses.items()))}


def _bucket(n: int) -> str:
    return "1" if n == 1 else "2" if n == 2 else "3-4" if n <= 4 else "5-8" if n <= 8 else "9+"


def fields_in_common(ops: list[Operation]) -> list[str]:
    """The request fields every one of `ops` (hostile requests, e.g. a triaged minimal group) set to
    an unusual value, by their case names: for a pair that crashes only together, the field the
    crash needs."""
    sets = [[f for f, _ in parse(o)["parts"]] for o in ops if o.role.hostile]
    if not sets or len(sets) != len(ops):
        return []
    return [f for f in sets[0] if all(f in s for s in sets[1:])]


def coverage_line(scenario: str, cov: dict[str, Any]) -> str:
    """One line of the console summary for a scenario's coverage (`summarize`'s entry)."""
    plan = cov.get("plan") or {}
    eps = cov.get("endpoints") or {}
    fields = ", ".join(f"{ep} {r.get('fields_tried')}/{r.get('fields_declared')}" for ep, r in sorted(eps.items()))
    overlap = 100 * (cov.get("victim_overlap") or 0)
    line = (f"{scenario}: {cov.get('requests', 0)} hostile requests in {cov.get('wall_s', 0)} s; fields tried "
            f"{fields or '-'}; pairwise {plan.get('pairwise_pairs_covered', 0)}/{plan.get('pairwise_pairs_total', 0)}; "
            f"overlapping a victim {cov.get('victim_overlap_requests', 0)} ({overlap:.0f}%); "
            f"statuses {cov.get('statuses', {})}")
    if plan.get("openapi") is False:
        line += "; no OpenAPI document: only the fallback fields were fuzzed"
    return line
