"""The console summary: verdict, one row per check, counts of comparisons and drift."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from harness.verdict import CheckResult, Verdict

_STYLE = {Verdict.PASS: "bold green", Verdict.FAIL: "bold red", Verdict.UNKNOWN: "bold yellow",
          Verdict.NOT_APPLICABLE: "dim"}


def print_summary(console: Console, verdict: Verdict, results: list[CheckResult], meta: dict[str, Any],
                  report_dir: Path) -> None:
    table = Table(title="isolation checks")
    for col in ("check", "verdict", "exercised", "violations", "drift"):
        table.add_column(col, no_wrap=True)
    for r in results:
        table.add_row(r.name, f"[{_STYLE[r.verdict]}]{r.verdict.value.upper()}[/]", str(r.exercised),
                      str(len(r.violations)), str(r.drift))
    console.print(table)
    for r in results:
        for note in r.notes[:12]:
            console.print(f"  [dim]{r.name}:[/] {note}")
    for r in results:
        for v in r.violations[:10]:
            console.print(f"[red]violation[/] [{r.name}] {v.scenario}: {v.message}")
    comparisons = sum(r.exercised for r in results if r.name in ("counterfactual-isolation", "cache-transparency"))
    drift = sum(r.drift for r in results)
    console.print(f"requests: {meta.get('requests', 0)}   comparisons: {comparisons}   drift (near-ties): {drift}   "
                  f"seeds: {meta.get('seeds', {})}")
    for k in meta.get("known_findings", []):
        state = f"reproduced ({k['violations']} violation(s))" if k["reproduced"] else "did NOT reproduce (fixed?)"
        console.print(f"[bold magenta]known finding[/] {k['id']}: {k['title']} -- {state}; see {k['reproducer']}")
    if meta.get("error"):
        console.print(f"[bold yellow]run stopped early:[/] {meta['error']}")
    for path in meta.get("reproducers", [])[:10]:
        console.print(f"reproducer: {path}")
    console.print(f"report: {report_dir}/report.html  json: {report_dir}/report.json  junit: {report_dir}/junit.xml  "
                  f"history: {report_dir}/history.jsonl")
    console.print(f"verdict: [{_STYLE[verdict]}]{verdict.value.upper()}[/] (exit {verdict.exit_code})")
