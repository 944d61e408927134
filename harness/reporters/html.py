"""`report.html`: one self-contained page a person can read, rendered from a `RunResult`.

A live run renders from the result in memory (its history, checks and metadata); `harness
report DIR` re-renders a saved run through `RunResult.load(DIR)`. The page holds the verdict
banner, the per-check table, every violation (reference vs observed tokens from the first
divergence, top logprobs and margin there, users and tenants, the reproducer from the folder's
`reproducers/`), a timeline of every request as inline SVG, cache reuse per request against the
longest shared prefix, the run's metadata and any `*.png` plots in the folder.

Model text is untrusted: everything goes through jinja2 autoescaping and nothing from the history
is ever marked safe. The page also carries a Content-Security-Policy that forbids scripts and any
network fetch, so even an escaping bug could not run model output. No JavaScript is used.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Any

from harness.reporters.html_env import ReportError, env, fmt
from harness.reporters.html_selftest import render_selftest_html, write_selftest_html
from harness.reporters.html_timeline import AXIS_H, LABEL_W, LANE_H, PLOT_W, build_cache, build_timelines, reuse_colour
from harness.reporters.html_tokens import shared_prefixes, shown_tokens, token_words
from harness.reporters.html_violations import build_violations
from harness.reporters.noise import noise_lines
from harness.result import ReportSchemaError, RunResult


def _meta_rows(meta: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(key, value, is_block) rows; nested values as indented JSON."""
    rows = []
    for k, v in meta.items():
        if isinstance(v, (dict, list)):
            rows.append((k, json.dumps(v, indent=1, default=str), True))
        else:
            rows.append((k, fmt(v, 6) if isinstance(v, float) else str(v), False))
    return rows


def _images(report_dir: Path | None) -> list[tuple[str, str]]:
    """Plots saved in the folder (e.g. the timing audit's), as data: URIs; screenshots excluded."""
    out: list[tuple[str, str]] = []
    if report_dir is None:
        return out
    for p in sorted(Path(report_dir).glob("*.png")):
        if p.name.startswith("screenshot"):
            continue
        out.append((p.name, "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode("ascii")))
    return out


def render_html(result: RunResult, report_dir: Path | None = None) -> str:
    """The page for a run, as a string (see the module docstring for what it holds). Reproducers
    and plots are read from `report_dir` (default: the result's own folder), if any."""
    report_dir = report_dir if report_dir is not None else result.report_dir
    report = result.to_json()
    history = result.history
    words = token_words(history.ops, shown_tokens(report, history))
    flat = [v for c in report.get("checks", []) for v in c.get("violations", [])]
    flagged = {i for v in flat for i in v.get("op_ids", [])}
    rows, scatter, block = build_cache(history)
    meta = report.get("metadata") or {}
    verdict = str(report.get("verdict", "unknown")).lower()
    return env().get_template("report.html.j2").render(
        verdict=verdict if verdict in ("pass", "fail", "unknown") else "unknown",
        checks=report.get("checks", []),
        meta=meta,
        meta_rows=_meta_rows(meta),
        violations=build_violations(report, history, report_dir, words),
        noise=noise_lines(result),
        violation_total=len(flat),
        flat_violations=flat,
        timelines=build_timelines(history, flagged),
        cache_rows=rows,
        scatter=scatter,
        block=block,
        images=_images(report_dir),
        has_history=bool(history.records) or (report_dir is not None and (report_dir / "history.jsonl").is_file()),
        n_ops=len(history.ops),
        n_runs=len(history.runs),
        geom={"label_w": LABEL_W, "plot_w": PLOT_W, "lane_h": LANE_H, "axis_h": AXIS_H},
        legend=[(f"{int(r * 100)}%", reuse_colour(int(r * 100), 100)) for r in (0, 0.25, 0.5, 0.75, 1.0)],
    )


def write_html(result: RunResult, report_dir: Path, fallback: bool = True) -> Path:
    """Render `report_dir/report.html` for `result`; returns its path.

    With `fallback` (a live run's call), a rendering bug must not cost the run its verdict and
    exit code: the page then says what went wrong and points at report.json, and a warning goes
    to stderr."""
    out = Path(report_dir) / "report.html"
    try:
        page = render_html(result, Path(report_dir))
    except Exception as exc:
        if not fallback:
            raise
        print(f"warning: report.html could not be rendered: {type(exc).__name__}: {exc}", file=sys.stderr)
        page = env().from_string(
            "<!DOCTYPE html><html><head><meta charset='utf-8'><title>isolation report</title></head><body>"
            "<h1>report.html could not be rendered</h1><pre>{{ err }}</pre>"
            "<p>The run's results are in report.json beside this file.</p></body></html>"
        ).render(err=f"{type(exc).__name__}: {exc}")
    out.write_text(page, encoding="utf-8")
    return out


def rerender(report_dir: Path) -> Path:
    """Re-render a saved run's report.html from its folder (`harness report DIR`); raises
    ReportError when the folder holds no readable report."""
    try:
        result = RunResult.load(Path(report_dir))
    except ReportSchemaError as exc:
        raise ReportError(str(exc)) from None
    return write_html(result, Path(report_dir), fallback=False)


__all__ = ["ReportError", "render_html", "render_selftest_html", "rerender", "shared_prefixes", "token_words",
           "write_html", "write_selftest_html"]
