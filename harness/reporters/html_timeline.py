"""The HTML report's pictures: a timeline of every request per scenario, and cache reuse per request
against the longest shared prefix (a table and a scatter plot), as view models for the template."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

from harness.checks.accounting import infer_block_size
from harness.history.record import History, Operation, Role
from harness.reporters.html_tokens import shared_prefixes

RUN_ORDER = {Role.MAIN: 0, Role.COUNTERFACTUAL: 10, Role.SOLO: 90}
LABEL_W, PLOT_W, LANE_H, GROUP_H, AXIS_H = 220, 940, 14, 18, 24


@dataclass
class Bar:
    x: float
    y: float
    w: float
    fill: str
    title: str
    violation: bool
    ok: bool


@dataclass
class Lane:
    y: float
    label: str
    header: bool = False


@dataclass
class Timeline:
    scenario: str
    height: float
    lanes: list[Lane]
    bars: list[Bar]
    ticks: list[tuple[float, str]]
    span_s: float


def reuse_colour(cached: int | None, prompt: int | None) -> str:
    """Light blue (no reuse) to dark blue (whole prompt cached); grey when unknown."""
    if cached is None or not prompt:
        return "#b8b8b8"
    r = max(0.0, min(1.0, cached / prompt))
    lo, hi = (222, 235, 247), (8, 48, 107)
    return "#" + "".join(f"{round(a + (b - a) * r):02x}" for a, b in zip(lo, hi, strict=True))


def _run_key(run: str) -> tuple[int, str]:
    try:
        role: Role | None = Role.of_run(run)
    except ValueError:  # a run name no planner gives
        role = None
    return RUN_ORDER.get(role, 50) if role is not None else 50, run


def nice_step(span: float, parts: int) -> float:
    """A 1-2-5 step that cuts span into about `parts` pieces."""
    raw = span / parts
    mag = 10.0 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1.0, 2.0, 5.0, 10.0) if m * mag >= raw)


def _ticks(span: float) -> list[tuple[float, str]]:
    step = nice_step(span, 6)
    decimals = max(0, -math.floor(math.log10(step)))
    out, k = [], 0
    while k * step <= span + 1e-9:
        out.append((round(LABEL_W + k * step / span * PLOT_W, 2), f"{k * step:.{decimals}f} s"))
        k += 1
    return out


def build_timelines(history: History, flagged: set[str]) -> list[Timeline]:
    """One SVG per scenario: a lane per (run, user), a bar per request from invoke to complete."""
    ops_by_scenario: dict[str, list[Operation]] = defaultdict(list)
    for o in history.ops:
        ops_by_scenario[o.scenario].append(o)
    runs = {(r.scenario, r.run): r for r in history.runs}
    out = []
    for scenario, ops in ops_by_scenario.items():
        t0 = min(o.invoke_s for o in ops)
        span = max(max(o.complete_s for o in ops) - t0, 1e-6)
        lanes: list[Lane] = []
        lane_y: dict[tuple[str, str], float] = {}
        y = AXIS_H
        by_run: dict[str, list[Operation]] = defaultdict(list)
        for o in ops:
            by_run[o.run].append(o)
        for run in sorted(by_run, key=_run_key):
            info = runs.get((scenario, run))
            mode = f" (isolation: {info.isolation})" if info and info.isolation != "shared" else ""
            lanes.append(Lane(y, f"{run}{mode}", header=True))
            y += GROUP_H
            order = {u: i for i, u in enumerate(info.variants)} if info else {}
            tenant_of = {o.user: o.tenant for o in by_run[run]}
            for u in sorted(tenant_of, key=lambda u: (order.get(u, len(order)), u)):
                lanes.append(Lane(y, f"{u} ({tenant_of[u]})"))
                lane_y[(run, u)] = y
                y += LANE_H
        bars = []
        for o in ops:
            latency = o.complete_s - o.invoke_s
            reuse = (f"cached {o.cached_tokens}/{o.prompt_tokens} prompt tokens" if o.cached_tokens is not None
                     else "cached tokens unknown")
            parts = [o.op_id, f"user {o.user} (tenant {o.tenant})", f"latency {latency:.3f} s"]
            if o.ttft_s is not None:
                parts.append(f"ttft {o.ttft_s:.3f} s")
            parts.append(reuse)
            if not o.ok:
                parts.append(f"ERROR {o.status}: {(o.error or '')[:160]}")
            if o.op_id in flagged:
                parts.append("named in a violation")
            bars.append(Bar(x=round(LABEL_W + (o.invoke_s - t0) / span * PLOT_W, 2), y=lane_y[(o.run, o.user)] + 2,
                            w=round(max(latency / span * PLOT_W, 1.5), 2),
                            fill=reuse_colour(o.cached_tokens, o.prompt_tokens) if o.ok else "#222",
                            title=" \u00b7 ".join(parts), violation=o.op_id in flagged, ok=o.ok))
        out.append(Timeline(scenario, y + 6, lanes, bars, _ticks(span), span))
    return out


@dataclass
class CacheRow:
    op_id: str
    run: str
    user: str
    tenant: str
    salt: str | None
    prompt_tokens: int | None
    cached: int | None
    shared: int | None
    explained: int | None
    unexplained: bool


@dataclass
class Scatter:
    points: list[tuple[float, float, bool, float, str]]  # x, y, unexplained, radius, tooltip
    size: float
    max_tokens: int
    ticks: list[tuple[float, int]]


def build_cache(history: History) -> tuple[list[CacheRow], Scatter | None, int]:
    """Per request: cached tokens vs the longest shared prefix, and a scatter plot of the two."""
    ops = history.ops
    shared = shared_prefixes(ops)
    block = infer_block_size([o for o in ops if o.ok])
    rows = []
    for o in sorted(ops, key=lambda o: o.invoke_s):
        sp = shared.get(o.op_id)
        explained = None if sp is None else (sp // block) * block
        rows.append(CacheRow(o.op_id, o.run, o.user, o.tenant, o.cache_salt, o.prompt_tokens, o.cached_tokens, sp,
                             explained, o.cached_tokens is not None and explained is not None
                             and o.cached_tokens > explained))
    known = [r for r in rows if r.cached is not None and r.explained is not None]
    if not known:
        return rows, None, block
    top = max(max(r.cached or 0, r.explained or 0) for r in known) or 1
    size, pad = 360.0, 40.0
    scale = (size - 2 * pad) / top
    groups: dict[tuple[int, int, bool], list[str]] = defaultdict(list)
    for r in known:  # identical points drawn once, sized by how many requests they stand for
        groups[(r.explained or 0, r.cached or 0, r.unexplained)].append(r.op_id)
    pts = []
    for (ex, ca, bad), ids in groups.items():
        more = f" and {len(ids) - 3} more" if len(ids) > 3 else ""
        pts.append((round(pad + ex * scale, 1), round(size - pad - ca * scale, 1), bad,
                    round(min(3 + 1.5 * math.sqrt(len(ids) - 1), 12), 1),
                    f"{len(ids)} request(s), cached {ca}, shared prefix explains {ex}: {', '.join(ids[:3])}{more}"))
    step = max(1, int(nice_step(top, 5)))
    ticks = [(round(pad + v * scale, 1), v) for v in range(0, top + 1, step)]
    return rows, Scatter(pts, size, top, ticks), block
