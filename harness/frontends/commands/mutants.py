"""`harness mutants`: start the embedded vLLM with named mutations inside its own cache, adapter and
output code, run the relevant scenarios, and show which checks kill each mutant.

Exit 0 only when every applicable mutant is killed (a check FAILs on it that does not FAIL on the
unmutated baseline under the same seeds and known findings, and the server proved the mutation
changed a value) and no equivalent mutant is killed; 1 otherwise; 2 on a usage error. The matrix
goes to `mutants.json` and `mutants.html` in the report folder (merged with earlier parts).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from harness.frontends.cli import command
from harness.mutants.catalog import MUTANTS, Mutant
from harness.mutants.runner import KNOWN, LIBRARY, MatrixOptions, run_matrix
from harness.reporters.html_mutants import write_mutants_html


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--list", action="store_true", help="list the catalog (bug class, symbols, scenarios) and exit")
    p.add_argument("--mutant", action="append", default=None, metavar="NAME", help="only these mutants (repeatable)")
    p.add_argument("--report-dir", type=Path, default=Path("reports/mutants"))
    p.add_argument("--seed", type=int, default=None, help="override every scenario's content seed")
    p.add_argument("--full", action="store_true", help="run the whole scenario library for every mutant")
    p.add_argument("--scenario", action="append", default=None, metavar="FILE",
                   help="run these library scenarios instead of each mutant's own (repeatable)")
    p.add_argument("--no-timing", action="store_true", help="skip the salted timing audit of the salt mutants")
    p.add_argument("--known-findings", type=Path, default=KNOWN, metavar="FILE",
                   help="known findings applied to the baseline and the mutants alike (default: known-findings.yaml)")
    p.add_argument("--rebaseline", action="store_true", help="run the baselines again even if stored")


def _list(console: Console) -> int:
    table = Table(title="mutants")
    for col in ("mutant", "kind", "vLLM symbols", "scenarios", "bug class"):
        table.add_column(col)
    for m in MUTANTS:
        table.add_row(m.name, m.kind, "\n".join(m.symbols),
                      "\n".join(m.scenarios) + ("\n+ timing audit" if m.timing_audit else ""), m.bug_class)
    console.print(table)
    return 0


@command("mutants", _configure)
def mutants(args: argparse.Namespace) -> int:
    """Run mutants of the embedded vLLM's own code and show which checks kill them (exit 0: all killed)."""
    console = Console(stderr=True, width=max(Console(stderr=True).width, 132))
    if args.list:
        return _list(console)
    known = {m.name: m for m in MUTANTS}
    chosen: list[Mutant] = [known[n] for n in args.mutant if n in known] if args.mutant else list(MUTANTS)
    unknown = [n for n in args.mutant or [] if n not in known]
    missing = [s for s in args.scenario or [] if not (LIBRARY / s).is_file()]
    if unknown or missing:
        console.print(f"error: unknown mutant(s) {unknown} or scenario(s) {missing}; see --list and {LIBRARY}")
        return 2
    opts = MatrixOptions(report_dir=args.report_dir, seed=args.seed, full=args.full, timing=not args.no_timing,
                         known_findings=args.known_findings, scenarios=tuple(args.scenario or ()),
                         rebaseline=args.rebaseline)
    state = run_matrix(chosen, opts, console)
    page = write_mutants_html(state, args.report_dir)
    table = Table(title="kill matrix (this folder, all parts)")
    for col in ("mutant", "kind", "status", "killed by", "calls/changed", "wall s", "reason"):
        table.add_column(col)
    for name, r in state["mutants"].items():
        colour = "yellow" if not r["applicable"] else "green" if r["good"] else "red"
        table.add_row(name, r["kind"], f"[{colour}]{r['status']}[/]", ", ".join(r["killed_by"]) or "-",
                      f"{r['hits']['calls']}/{r['hits']['changed']}", str(r["wall_s"]), r["reason"])
    console.print(table)
    rate = state["kill_rate"]
    console.print(f"kill rate {rate['killed']}/{rate['applicable']}; matrix wall time {state['wall_s']} s; "
                  f"{args.report_dir / 'mutants.json'}  {page}")
    ran = {m.name for m in chosen}
    ok = all(state["mutants"][n]["good"] for n in ran if n in state["mutants"]) and (
        any(state["mutants"][n]["applicable"] for n in ran if n in state["mutants"] and
            state["mutants"][n]["kind"] == "mutant") or all(known[n].kind == "equivalent" for n in ran))
    return 0 if ok else 1
