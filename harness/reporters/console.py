"""The console summary of a `RunResult`: verdict, one row per check, counts of comparisons and drift."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from harness.adversary.coverage import coverage_line
from harness.checks.base import all_checks
from harness.incidents import incident_summary, stopped_at, stopped_text
from harness.reporters.noise import noise_lines
from harness.result import RunResult
from harness.verdict import Verdict

_STYLE = {Verdict.PASS: "bold green", Verdict.FAIL: "bold red", Verdict.UNKNOWN: "bold yellow",
          Verdict.NOT_APPLICABLE: "dim"}


def print_summary(result: RunResult, console: Console, report_dir: Path | None = None) -> None:
    report_dir = report_dir if report_dir is not None else result.report_dir
    table = Table(title="isolation checks")
    for col in ("check", "verdict", "exercised", "violations", "drift"):
        table.add_column(col, no_wrap=True)
    for r in result.checks:
        table.add_row(r.name, f"[{_STYLE[r.verdict]}]{r.verdict.value.upper()}[/]", str(r.exercised),
                      str(len(r.violations)), str(r.drift))
    console.print(table)
    for r in result.checks:
        for note in r.notes[:12]:
            console.print(f"  [dim]{r.name}:[/] {note}")
    for r in result.checks:
        for v in r.violations[:10]:
            console.print(f"[red]violation[/] [{r.name}] {v.scenario}: {v.message}")
    comparing = {c.name for c in all_checks() if c.compares_outputs}
    comparisons = sum(r.exercised for r in result.checks if r.name in comparing)
    drift = sum(r.drift for r in result.checks)
    console.print(f"requests: {result.meta.requests}   comparisons: {comparisons}   drift (near-ties): {drift}   "
                  f"seeds: {result.meta.seeds}")
    for line in noise_lines(result):
        console.print(f"  [dim]{line}[/]")
    rows = [row for row in result.decision.evidence if row.applies]
    if rows:
        short = [row for row in rows if not row.met]
        console.print(f"minimum evidence for PASS: {len(rows) - len(short)} of {len(rows)} met")
        for row in short:
            console.print(f"  [yellow]short:[/] {row.check}: {row.what} = {row.value:g} (needs {row.bound})")
    for name, cov in sorted((result.meta.extra.get("adversary") or {}).items()):
        console.print(f"adversary coverage {coverage_line(name, cov)}", highlight=False)
    for k in result.known:
        console.print(f"[bold magenta]known finding[/] {k.finding.id}: {k.finding.title} -- {k.status_text}; "
                      f"see {k.finding.reproducer}")
    if result.error:
        console.print(f"[bold yellow]run stopped early:[/] {result.error}")
        where = stopped_text(stopped_at(result.history, result.error))
        if where:
            console.print(f"[bold yellow]{where}[/]; history kept")
    for incident in incident_summary(result.history):
        state = (f"reproduced by {len(incident['group'])} request(s) fired together"  # type: ignore[arg-type]
                 if incident["reproduced"] else f"not attributable to any input ({incident['why_not']})")
        console.print(f"[bold]incident[/] {incident['what']} at t={incident['at_s']} s in {incident['scenario']}: "
                      f"{incident['failed']} request(s) failed; {state}")
    for path in result.reproducers[:10]:
        console.print(f"reproducer: {path}")
    if report_dir is not None:
        console.print(f"report: {report_dir}/report.html  json: {report_dir}/report.json  "
                      f"junit: {report_dir}/junit.xml  history: {report_dir}/history.jsonl")
    verdict = result.verdict
    style = "bold magenta" if result.known_reproduced and verdict is Verdict.PASS else _STYLE[verdict]
    console.print(f"verdict: [{style}]{result.headline}[/] (exit {verdict.exit_code})")
