"""`mutants.html`: the kill matrix as one self-contained page (a function of `mutants.json`'s content)."""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

FILE = "mutants.html"
_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;width:100%;font-size:14px}
th,td{border:1px solid #ccc;padding:4px 6px;vertical-align:top;text-align:left}
th{background:#f3f3f3}
.good{background:#e6f4e6}.bad{background:#fbe3e3}.na{background:#fff6d6}
code{font-size:12px}.banner{padding:.6em 1em;margin-bottom:1em;font-weight:bold}
"""


def _cell(text: Any) -> str:
    return f"<td>{escape(str(text))}</td>"


def _links(urls: list[str]) -> str:
    return "<br>".join(f'<a href="{escape(u)}">{escape(u.split("github.com/")[-1])}</a>' for u in urls) or "-"


def _verdicts(baseline: dict[str, Any]) -> str:
    return ", ".join(f"{s} {o.get('verdict')}" for s, o in baseline.get("outcomes", {}).items())


def render_mutants_html(state: dict[str, Any]) -> str:
    """The page's HTML."""
    rate = state.get("kill_rate", {"killed": 0, "applicable": 0})
    ok = bool(state.get("ok"))
    words = ("every mutant killed, no equivalent mutant killed" if ok
             else "NOT all mutants killed, or an equivalent mutant killed")
    banner = (f'<div class="banner {"good" if ok else "bad"}">{words}'
              f' &middot; kill rate {rate["killed"]}/{rate["applicable"]}'
              f' &middot; matrix wall time {state.get("wall_s", 0)} s</div>')
    head = ("<tr><th>mutant</th><th>kind</th><th>status</th><th>killed by</th><th>hits (calls / changed)</th>"
            "<th>scenarios</th><th>wall s</th><th>why</th><th>bug class</th><th>vLLM symbols</th><th>upstream</th>"
            "<th>reproducer</th></tr>")
    rows = []
    for name, r in state.get("mutants", {}).items():
        cls = "na" if not r.get("applicable", True) else "good" if r.get("good") else "bad"
        hits = r.get("hits", {})
        rep = r.get("reproducer") or {}
        rep_html = (f"<code>{escape(rep['command'])}</code><br>{escape(rep.get('check', ''))} in "
                    f"{escape(rep.get('scenario', ''))} (seed {escape(str(rep.get('seed')))}, "
                    f"{escape(str(rep.get('requests')))} requests)") if rep else "-"
        rows.append(
            f'<tr class="{cls}">' + _cell(name) + _cell(r.get("kind")) + _cell(r.get("status"))
            + _cell(", ".join(r.get("killed_by", [])) or "-")
            + _cell(f"{hits.get('calls', 0)} / {hits.get('changed', 0)}")
            + _cell(", ".join(r.get("scenarios", []))) + _cell(r.get("wall_s", "")) + _cell(r.get("reason", ""))
            + _cell(r.get("bug_class", ""))
            + f"<td><code>{'<br>'.join(escape(s) for s in r.get('symbols', []))}</code></td>"
            + f"<td>{_links(r.get('upstream', []))}</td><td>{rep_html}</td></tr>")
    base = "".join(f"<li>{escape(k)}: {escape(_verdicts(b))} ({escape(str(b.get('wall_s', 0)))} s)</li>"
                   for k, b in state.get("baselines", {}).items())
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>harness mutants</title><style>{_CSS}</style>"
            f"</head><body><h1>Mutants inside the server: the kill matrix</h1>{banner}<table>{head}{''.join(rows)}"
            f"</table><h2>Baselines (the unmutated server, same seeds and known findings)</h2><ul>{base}</ul>"
            "<p>A mutant is killed when a check FAILs on it that does not FAIL on the baseline's same scenario; it "
            "counts only when the server proved its mutated code changed a value (hits).</p></body></html>")


def write_mutants_html(state: dict[str, Any], folder: Path) -> Path:
    path = Path(folder) / FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_mutants_html(state))
    return path
