"""`report.html`: one self-contained page a person can read, rendered only from the report folder.

Reads `report.json`, `history.jsonl`, `reproducers/*` and any `*.png` plots in the folder (so
`harness report DIR` can re-render an old run) and writes `report.html`: the verdict banner, the
per-check table, every violation (reference vs observed tokens from the first divergence, top
logprobs and margin there, users and tenants, the reproducer), a timeline of every request as
inline SVG, cache reuse per request against the longest shared prefix, and the run's metadata.

Model text is untrusted: everything goes through jinja2 autoescaping and nothing from the history
is ever marked safe. The page also carries a Content-Security-Policy that forbids scripts and any
network fetch, so even an escaping bug could not run model output. No JavaScript is used.
"""

from __future__ import annotations

import base64
import json
import math
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from harness.checks.accounting import infer_block_size
from harness.history.record import History, Operation, read_history

TEMPLATES = Path(__file__).resolve().parent / "templates"
RUN_ORDER = {"main": 0, "solo": 90}
TREE_BLOCK = 32  # tokens per node of the prefix tree used to find shared prefixes
CONTEXT_BEFORE = 3  # tokens shown before the first divergence
MAX_TOKEN_ROWS = 64
MAX_VIOLATION_SECTIONS = 200  # full sections; any beyond are listed in the summary table only
MAX_REPRO_CHARS = 200_000  # per reproducer file embedded in the page
OUTPUT_CHECKS = {"counterfactual-isolation", "cache-transparency"}
LABEL_W, PLOT_W, LANE_H, GROUP_H, AXIS_H = 220, 940, 14, 18, 24


class ReportError(RuntimeError):
    """The folder cannot be rendered (e.g. it holds no report.json)."""


def _env() -> Environment:
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(["html", "j2"],
                      default=True, default_for_string=True), undefined=StrictUndefined, trim_blocks=True,
                      lstrip_blocks=True)
    env.filters["fmt"] = _fmt
    return env


def _fmt(value: Any, digits: int = 3) -> str:
    """A number for people: '-' for None, rounded floats, plain ints."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.{digits}g}" if abs(value) < 1e-3 and value else f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return str(value)


# --- shared prefixes -----------------------------------------------------------------------------

def _common(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def shared_prefixes(ops: list[Operation], block: int = TREE_BLOCK) -> dict[str, int]:
    """op_id -> longest token prefix its prompt shares with another request of its cache domain
    (model, salt) invoked before it completed, counting that request's prompt and output (the
    window `cache-accounting` uses). Near-linear: a tree of `block`-token nodes, keyed by
    (parent node, block tokens), each remembering a few sequences that pass through it; the last
    partial block is compared token by token against those few."""
    usable = [o for o in ops if o.ok and o.prompt_token_ids is not None]
    seqs = {o.op_id: (o.prompt_token_ids or []) + o.output_token_ids for o in usable}
    nodes: dict[tuple[Any, tuple[int, ...]], int] = {}
    owners: list[list[str]] = []
    roots: dict[tuple[str, str | None], int] = {}

    def root(o: Operation) -> int:
        key = (o.model, o.cache_salt)
        if key not in roots:
            roots[key] = len(owners)
            owners.append([])
        return roots[key]

    def insert(o: Operation) -> None:
        seq, node = seqs[o.op_id], root(o)
        if len(owners[node]) < 4:
            owners[node].append(o.op_id)
        for k in range(len(seq) // block):
            key = (node, tuple(seq[k * block:(k + 1) * block]))
            node = nodes.get(key, -1)
            if node < 0:
                node = nodes[key] = len(owners)
                owners.append([])
            if len(owners[node]) < 4:
                owners[node].append(o.op_id)

    def query(o: Operation) -> int:
        prompt, node, depth = o.prompt_token_ids or [], root(o), 0
        if not any(i != o.op_id for i in owners[node]):
            return 0
        while (depth + 1) * block <= len(prompt):
            nxt = nodes.get((node, tuple(prompt[depth * block:(depth + 1) * block])))
            if nxt is None or not any(i != o.op_id for i in owners[nxt]):
                break
            node, depth = nxt, depth + 1
        start = depth * block
        tail = prompt[start:start + block]
        extra = max((_common(tail, seqs[i][start:start + block]) for i in owners[node] if i != o.op_id), default=0)
        return start + extra

    by_invoke = sorted(usable, key=lambda o: o.invoke_s)
    out: dict[str, int] = {}
    j = 0
    for q in sorted(usable, key=lambda o: o.complete_s):
        while j < len(by_invoke) and by_invoke[j].invoke_s < q.complete_s:
            insert(by_invoke[j])
            j += 1
        out[q.op_id] = query(q)
    return out


# --- token text (best effort) --------------------------------------------------------------------

def token_words(ops: list[Operation], needed: set[int] | None = None) -> dict[int, str]:
    """token id -> its text, guessed where an op's text splits on whitespace into exactly its
    token count (true for the embedded tokenizer: one token per word); ids seen with two
    different words are dropped. Only ids in `needed` are kept (all when None). A reading aid
    only: tokens are always compared by id."""
    words: dict[int, str] = {}
    bad: set[int] = set()

    def learn(ids: list[int], text: str) -> None:
        parts = text.split()
        if not ids or len(parts) != len(ids):
            return
        for i, w in zip(ids, parts):
            if (needed is None or i in needed) and words.setdefault(i, w) != w:
                bad.add(i)

    for o in ops:
        learn(o.output_token_ids, o.output_text)
        prompt = o.request.get("prompt") if isinstance(o.request, dict) else None
        ids = o.prompt_token_ids
        if isinstance(prompt, str) and ids and (needed is None or not needed.isdisjoint(ids)):
            learn(ids, prompt)
    for i in bad:
        words.pop(i, None)
    return words


def _shown_tokens(report: dict[str, Any], history: History) -> set[int]:
    """The token ids a violation view may show: outputs and top logprobs of the ops involved."""
    ops = {o.op_id: o for o in history.ops}
    ids: set[int] = set()
    for c in report.get("checks", []):
        for v in c.get("violations", [])[:MAX_VIOLATION_SECTIONS]:
            for i in v.get("op_ids", []):
                if i in ops:
                    ids.update(ops[i].output_token_ids)
                    for top in ops[i].top_logprobs:
                        ids.update(top)
    return ids


# --- view models ---------------------------------------------------------------------------------

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


def _reuse_colour(cached: int | None, prompt: int | None) -> str:
    """Light blue (no reuse) to dark blue (whole prompt cached); grey when unknown."""
    if cached is None or not prompt:
        return "#b8b8b8"
    r = max(0.0, min(1.0, cached / prompt))
    lo, hi = (222, 235, 247), (8, 48, 107)
    return "#%02x%02x%02x" % tuple(round(a + (b - a) * r) for a, b in zip(lo, hi))


def _run_key(run: str) -> tuple[int, str]:
    if run in RUN_ORDER:
        return RUN_ORDER[run], run
    return (10, run) if run.startswith("cf-") else (50, run)


def _nice_step(span: float, parts: int) -> float:
    """A 1-2-5 step that cuts span into about `parts` pieces."""
    raw = span / parts
    mag = 10 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)


def _ticks(span: float) -> list[tuple[float, str]]:
    step = _nice_step(span, 6)
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
                            fill=_reuse_colour(o.cached_tokens, o.prompt_tokens) if o.ok else "#222",
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
    step = max(1, int(_nice_step(top, 5)))
    ticks = [(round(pad + v * scale, 1), v) for v in range(0, top + 1, step)]
    return rows, Scatter(pts, size, top, ticks), block


@dataclass
class TokenRow:
    position: int
    reference: int | None
    observed: int | None
    ref_word: str
    obs_word: str
    diverged: bool
    first: bool


@dataclass
class OpSummary:
    op_id: str
    run: str
    user: str
    tenant: str
    model: str
    salt: str | None
    ok: bool
    status: int | None
    cached: int | None
    prompt_tokens: int | None
    latency_s: float
    output_text: str
    error: str | None


@dataclass
class ViolationView:
    index: int
    anchor: str
    check: str
    scenario: str
    message: str
    users: list[tuple[str, str]]
    ops: list[OpSummary]
    details: list[tuple[str, str]]
    tokens: list[TokenRow] = field(default_factory=list)
    ref_top: list[tuple[int, str, float, str]] = field(default_factory=list)
    obs_top: list[tuple[int, str, float, str]] = field(default_factory=list)
    position: int | None = None
    margin: str = ""
    canary: str = ""
    repro_dir: str = ""
    scenario_yaml: str = ""
    requests_sh: str = ""


def _summary(o: Operation) -> OpSummary:
    return OpSummary(o.op_id, o.run, o.user, o.tenant, o.model, o.cache_salt, o.ok, o.status, o.cached_tokens,
                     o.prompt_tokens, o.complete_s - o.invoke_s, o.output_text, o.error)


def _top(op: Operation, pos: int, words: dict[int, str], ref_tok: int | None, obs_tok: int | None
         ) -> list[tuple[int, str, float, str]]:
    top = op.top_logprobs[pos] if pos < len(op.top_logprobs) else {}
    mark = {ref_tok: "reference", obs_tok: "observed"} if ref_tok != obs_tok else {ref_tok: "both"}
    return [(t, words.get(t, ""), lp, mark.get(t, "")) for t, lp in sorted(top.items(), key=lambda kv: -kv[1])]


def _read_text(path: Path) -> str:
    if not path.is_file():
        return ""
    text = path.read_text(encoding="utf-8", errors="replace")
    if len(text) > MAX_REPRO_CHARS:
        text = text[:MAX_REPRO_CHARS] + f"\n... ({len(text)} characters; see {path.name})"
    return text


def _repro_dirs(report_dir: Path) -> dict[int, Path]:
    root = report_dir / "reproducers"
    out = {}
    if root.is_dir():
        for d in root.iterdir():
            head = d.name.split("-", 1)[0]
            if d.is_dir() and head.isdigit():
                out[int(head)] = d
    return out


def build_violations(report: dict[str, Any], history: History, report_dir: Path,
                     words: dict[int, str]) -> list[ViolationView]:
    """A view per violation, in report order (which is also the reproducers' numbering)."""
    ops = {o.op_id: o for o in history.ops}
    tenants: dict[tuple[str, str], str] = {}
    for r in history.runs:
        for u, t in r.tenants.items():
            tenants.setdefault((r.scenario, u), t)
    repros = _repro_dirs(report_dir)
    views = []
    flat = [v for c in report.get("checks", []) for v in c.get("violations", [])]
    for i, v in enumerate(flat[:MAX_VIOLATION_SECTIONS], start=1):
        details = v.get("details") or {}
        vops = [ops[i_] for i_ in v.get("op_ids", []) if i_ in ops]
        users = list(dict.fromkeys(list(v.get("users", [])) + [o.user for o in vops]))
        view = ViolationView(
            index=i, anchor=f"v{i}", check=v.get("check", ""), scenario=v.get("scenario", ""),
            message=v.get("message", ""),
            users=[(u, tenants.get((v.get("scenario", ""), u), "?")) for u in users],
            ops=[_summary(o) for o in vops],
            details=[(str(k), json.dumps(val, default=str) if isinstance(val, (dict, list)) else _fmt(val, 6))
                     for k, val in details.items()],
            canary=str(details.get("canary") or ""),
        )
        pos = details.get("position")
        if v.get("check") in OUTPUT_CHECKS and len(vops) == 2 and isinstance(pos, int):
            ref, obs = vops
            view.position = pos
            a, b = ref.output_token_ids, obs.output_token_ids
            start = max(0, pos - CONTEXT_BEFORE)
            end = min(max(len(a), len(b)), start + MAX_TOKEN_ROWS)
            for p in range(start, end):
                ta = a[p] if p < len(a) else None
                tb = b[p] if p < len(b) else None
                view.tokens.append(TokenRow(p, ta, tb, words.get(ta, "") if ta is not None else "",
                                            words.get(tb, "") if tb is not None else "", ta != tb, p == pos))
            rt, ot = details.get("reference_token"), details.get("observed_token")
            view.ref_top = _top(ref, pos, words, rt, ot)
            view.obs_top = _top(obs, pos, words, rt, ot)
            m = details.get("margin")
            view.margin = (f"{m:.6g} nats" if isinstance(m, (int, float)) else
                           "n/a (the two tokens are not both among the reference's top logprobs)")
        d = repros.get(i)
        if d is not None:
            view.repro_dir = f"reproducers/{d.name}"
            view.scenario_yaml = _read_text(d / "scenario.yaml")
            view.requests_sh = _read_text(d / "requests.sh")
        views.append(view)
    return views


def _meta_rows(meta: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(key, value, is_block) rows; nested values as indented JSON."""
    rows = []
    for k, v in meta.items():
        if isinstance(v, (dict, list)):
            rows.append((k, json.dumps(v, indent=1, default=str), True))
        else:
            rows.append((k, _fmt(v, 6) if isinstance(v, float) else str(v), False))
    return rows


def _images(report_dir: Path) -> list[tuple[str, str]]:
    """Plots saved in the folder (e.g. the timing audit's), as data: URIs; screenshots excluded."""
    out = []
    for p in sorted(report_dir.glob("*.png")):
        if p.name.startswith("screenshot"):
            continue
        out.append((p.name, "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode("ascii")))
    return out


def render_html(report_dir: Path) -> str:
    """The page for a report folder, as a string (see the module docstring for what it holds)."""
    report_dir = Path(report_dir)
    rj = report_dir / "report.json"
    if not rj.is_file():
        raise ReportError(f"{report_dir} holds no report.json: not a harness report folder")
    try:
        report = json.loads(rj.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ReportError(f"{rj} is not valid JSON: {exc}") from None
    hist_path = report_dir / "history.jsonl"
    history = History(read_history(hist_path) if hist_path.is_file() else [])
    words = token_words(history.ops, _shown_tokens(report, history))
    flat = [v for c in report.get("checks", []) for v in c.get("violations", [])]
    flagged = {i for v in flat for i in v.get("op_ids", [])}
    rows, scatter, block = build_cache(history)
    meta = report.get("metadata") or {}
    verdict = str(report.get("verdict", "unknown")).lower()
    return _env().get_template("report.html.j2").render(
        verdict=verdict if verdict in ("pass", "fail", "unknown") else "unknown",
        checks=report.get("checks", []),
        meta=meta,
        meta_rows=_meta_rows(meta),
        violations=build_violations(report, history, report_dir, words),
        violation_total=len(flat),
        flat_violations=flat,
        timelines=build_timelines(history, flagged),
        cache_rows=rows,
        scatter=scatter,
        block=block,
        images=_images(report_dir),
        has_history=hist_path.is_file(),
        n_ops=len(history.ops),
        n_runs=len(history.runs),
        geom={"label_w": LABEL_W, "plot_w": PLOT_W, "lane_h": LANE_H, "axis_h": AXIS_H},
        legend=[(f"{int(r * 100)}%", _reuse_colour(int(r * 100), 100)) for r in (0, 0.25, 0.5, 0.75, 1.0)],
    )


def write_html(report_dir: Path, fallback: bool = True) -> Path:
    """Render report_dir/report.html from the folder's own files; returns its path.

    With `fallback` (the pipeline's call), a rendering bug must not cost the run its verdict and
    exit code: the page then says what went wrong and points at report.json, and a warning goes to
    stderr. A folder without report.json always raises ReportError."""
    out = Path(report_dir) / "report.html"
    try:
        page = render_html(report_dir)
    except ReportError:
        raise
    except Exception as exc:  # noqa: BLE001 - see the docstring
        if not fallback:
            raise
        print(f"warning: report.html could not be rendered: {type(exc).__name__}: {exc}", file=sys.stderr)
        page = _env().from_string(
            "<!DOCTYPE html><html><head><meta charset='utf-8'><title>isolation report</title></head><body>"
            "<h1>report.html could not be rendered</h1><pre>{{ err }}</pre>"
            "<p>The run's results are in report.json beside this file.</p></body></html>"
        ).render(err=f"{type(exc).__name__}: {exc}")
    out.write_text(page, encoding="utf-8")
    return out


def render_selftest_html(report_dir: Path) -> str:
    """The selftest matrix (fault x check) from selftest.json, linking each fault's own report."""
    report_dir = Path(report_dir)
    path = report_dir / "selftest.json"
    if not path.is_file():
        raise ReportError(f"{report_dir} holds no selftest.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    faults: dict[str, dict[str, Any]] = data.get("faults", {})
    checks = sorted({c for r in faults.values() for c in r.get("checks", {})})
    try:
        from harness.faults.catalog import CATALOG
        about = {k: s.description for k, s in CATALOG.items()}
    except ImportError:  # pragma: no cover - the catalog ships with the harness
        about = {}
    rows = []
    for name, r in faults.items():
        detected = bool(r.get("detected_by"))
        good = r.get("good")  # written by the selftest (capability-aware); older files: judged here
        if good is None:
            good = detected if r.get("kind") == "fault" else (not detected and r.get("verdict") == "pass")
        rows.append({"name": name, "kind": r.get("kind", ""), "verdict": r.get("verdict", "unknown"), "good": good,
                     "cells": [r.get("checks", {}).get(c, "") for c in checks], "injections": r.get("injections"),
                     "to_detect": r.get("requests_to_detection"), "requests": r.get("requests"),
                     "error": r.get("error") or "", "about": about.get(name, ""), "reason": r.get("reason") or "",
                     "link": f"{name}/report.html" if (report_dir / name / "report.html").is_file() else ""})
    return _env().get_template("selftest.html.j2").render(ok=bool(data.get("ok")), checks=checks, rows=rows)


def write_selftest_html(report_dir: Path) -> Path:
    """Render report_dir/report.html for a selftest folder; returns its path."""
    out = Path(report_dir) / "report.html"
    out.write_text(render_selftest_html(report_dir), encoding="utf-8")
    return out


__all__ = ["ReportError", "render_html", "write_html", "render_selftest_html", "write_selftest_html",
           "shared_prefixes", "token_words"]
