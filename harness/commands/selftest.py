"""`harness selftest`: prove every check can fail, on the user's own stack.

Runs the relevant scenarios through the fault-injecting proxy once per catalog fault and prints a
fault x check matrix (detected = that check FAILed). Benign controls must never produce a FAIL.
Exit 0 only when every fault is detected by at least one check and no benign control FAILed.
"""

from __future__ import annotations

import argparse
import json
from contextlib import ExitStack
from pathlib import Path

from rich.console import Console
from rich.table import Table

from harness.audit.timing import AuditConfig, audit
from harness.cli import command
from harness.faults.catalog import CATALOG
from harness.faults.proxy import FaultProxy
from harness.pipeline import RunConfig, run_isolation
from harness.reports.html import write_selftest_html
from harness.target.embedded import EmbeddedServer, LaunchError

LIBRARY = Path(__file__).resolve().parents[2] / "scenarios"
# The scenarios in which each fault has something to act on.
SCENARIOS: dict[str, list[str]] = {
    "swap": ["burst.yaml"],
    "bleed": ["shared-system-prompt.yaml"],
    "inject-context": ["shared-document.yaml"],
    "stale": ["shared-document.yaml"],
    "flip": ["strict-prefix.yaml"],
    "salt-drop": ["salted-tenants.yaml"],
    "salt-merge": ["salted-tenants.yaml"],
    "phantom-hit": ["strict-prefix.yaml"],
    "noise": ["shared-system-prompt.yaml", "burst.yaml"],
    "delay": ["shared-system-prompt.yaml"],
    "reorder": ["burst.yaml"],
}


# Faults (and a benign control) that the salted timing audit also runs through: salt faults must
# show up as a timing / cached-token side channel; added latency must not.
TIMING_FAULTS = ("salt-drop", "salt-merge", "delay")


def _timing_checks(target: str, fault: str, seed: int) -> dict[str, str]:
    """Run the salted timing audit through the proxy; check name -> verdict."""
    with FaultProxy(target, fault=fault, rate=1.0, seed=seed) as proxy:
        result = audit(AuditConfig(target=proxy.url, policy="salted"))
    return {c.name: c.verdict.value for c in result.checks}


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default=None, help="base URL (default: start the embedded vLLM server)")
    p.add_argument("--report-dir", type=Path, default=Path("reports/selftest"))
    p.add_argument("--fault", action="append", default=None, help="only these faults (repeatable)")
    p.add_argument("--scenarios", type=Path, default=LIBRARY, help="scenario folder (default: the library)")
    p.add_argument("--seed", type=int, default=0, help="the proxy's fault RNG seed")
    p.add_argument("--no-timing", action="store_true",
                   help=f"skip the timing audit (run through {', '.join(TIMING_FAULTS)}; about a minute each)")


def _requests_to_detection(report: dict, history_path: Path) -> int | None:
    """How many requests (in the history's order) were sent before some violation was fully shown:
    for each violation, the position of the last of its requests; the smallest over violations."""
    with open(history_path) as fh:
        ops = [json.loads(line) for line in fh if '"kind":"op"' in line]
    position = {rec["op_id"]: i + 1 for i, rec in enumerate(ops)}
    shown = [max((position.get(i, 0) for i in v["op_ids"]), default=0)
             for c in report["checks"] for v in c["violations"]]
    shown = [n for n in shown if n]  # a run-level violation (e.g. server-counters) names no request
    return min(shown) if shown else None


@command("selftest", _configure)
def selftest(args: argparse.Namespace) -> int:
    """Run each catalog fault through the proxy and show which checks detect it (exit 0: all detected)."""
    console = Console(stderr=True, width=max(Console(stderr=True).width, 132))
    faults = args.fault or [f for f in CATALOG if f in SCENARIOS]
    unknown = [f for f in faults if f not in CATALOG]
    if unknown:
        console.print(f"error: unknown fault(s) {unknown}; known: {sorted(CATALOG)}")
        return 2
    rows: dict[str, dict] = {}
    with ExitStack() as stack:
        target = args.target
        if target is None:
            try:
                target = stack.enter_context(EmbeddedServer()).base_url
            except LaunchError as exc:
                console.print(f"error: {exc}")
                return 2
        for name in faults:
            spec = CATALOG[name]
            out_dir = args.report_dir / name
            console.print(f"[bold]{name}[/] ({spec.kind}) ...")
            with FaultProxy(target, fault=name, rate=1.0, seed=args.seed) as proxy:
                out = run_isolation(RunConfig(target=proxy.url, report_dir=out_dir,
                                              scenario_paths=[args.scenarios / s for s in SCENARIOS.get(name, [])]),
                                    console=Console(stderr=True, quiet=True))
                injected = len(proxy.injections)
            checks = {r.name: r.verdict.value for r in out.results}
            if name in TIMING_FAULTS and not args.no_timing:
                console.print(f"[bold]{name}[/]: timing audit (salted) ...")
                checks.update(_timing_checks(target, name, args.seed))
            detected = [c for c, v in checks.items() if v == "fail"]
            rows[name] = {
                "kind": spec.kind, "verdict": out.verdict.value, "injections": injected,
                "checks": checks,
                "detected_by": detected,
                "requests_to_detection": _requests_to_detection(out.report, out_dir / "history.jsonl"),
                "requests": out.report["metadata"].get("requests"),
                "error": out.error,
            }
    checks = sorted({c for r in rows.values() for c in r["checks"]})
    table = Table(title="selftest: fault x check (X = detected: the check FAILed; columns numbered below)")
    for col in ["fault", "kind", *[f"{i + 1}" for i in range(len(checks))], "verdict", "injected", "to detect"]:
        table.add_column(col, no_wrap=True, min_width=len(col))
    ok = True
    for name, r in rows.items():
        cells = ["X" if r["checks"].get(c) == "fail" else "." for c in checks]
        good = bool(r["detected_by"]) if r["kind"] == "fault" else not r["detected_by"] and r["verdict"] == "pass"
        ok &= good
        table.add_row(name, r["kind"], *cells, ("[green]" if good else "[red]") + r["verdict"].upper() + "[/]",
                      str(r["injections"]), str(r["requests_to_detection"] or "-"))
    console.print(table)
    console.print("  ".join(f"{i + 1}={c}" for i, c in enumerate(checks)))
    console.print("to detect: requests sent before the first violation was fully shown")
    args.report_dir.mkdir(parents=True, exist_ok=True)
    (args.report_dir / "selftest.json").write_text(json.dumps({"ok": ok, "faults": rows}, indent=2))
    console.print(f"matrix: {args.report_dir / 'selftest.json'}  page: {write_selftest_html(args.report_dir)}")
    console.print("[green]every fault detected; no benign control failed[/]" if ok
                  else "[red]selftest failed: a fault went undetected or a benign control failed[/]")
    return 0 if ok else 1
