"""`harness selftest`: prove every check can fail, on the user's own stack.

Runs the relevant scenarios through the fault-injecting proxy once per catalog fault and prints a
fault x check matrix (detected = that check FAILed). Benign controls must never produce a FAIL.

Capability-aware, failing closed. The target is probed first (the same probe a run takes); a fault
whose needs (`FaultSpec.needs`) the target does not verifiably offer is still run, but if no check
detects it the row is "n/a" with the reason, and it does not count against the exit code. A benign
control is good when no check FAILed and every check of its run that did not PASS (or was n/a) is
UNKNOWN only because the target lacks what that check needs (`catalog.CHECK_NEEDS`). Exit 0 only
when every applicable fault is detected, at least one fault was applicable, and every benign
control is good; 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from harness.audit.timing import AuditConfig, audit
from harness.frontends.cli import command
from harness.faults.catalog import CATALOG, CHECK_NEEDS, NEEDS
from harness.faults.proxy import FaultProxy
from harness.pipeline import RunConfig, run_isolation
from harness.probe.needs import offered, probe_target
from harness.reporters.html import write_selftest_html
from harness.probe.capabilities import Capabilities, ProbeError
from harness.client.http import TargetClient
from harness.stacks.vllm import EmbeddedServer, LaunchError

LIBRARY = Path(__file__).resolve().parents[3] / "scenarios"
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


@dataclass(frozen=True)
class Judgement:
    """How one selftest row counts: good (not against the exit code), its shown verdict, and why."""

    good: bool
    verdict: str
    reason: str
    applicable: bool = True


def judge(name: str, checks: dict[str, str], run_verdict: str, lacking: dict[str, str], *,
          audit_checks: Iterable[str] = (), injections: int | None = None, error: str | None = None,
          skipped: dict[str, str] | None = None) -> Judgement:
    """Decide one row from its check verdicts and what the target lacks (need -> why, see `offered`).

    A fault: detected (some check FAILed) is good; undetected with a need the target lacks is n/a
    (good, not applicable); otherwise bad. A benign control: bad on any FAIL, a run that stopped
    early or skipped a scenario, or an UNKNOWN in a check whose needs the target offers (or that
    names no needs); good otherwise. Checks in `audit_checks` (the timing audit) count for FAILs only, as
    they always did: their UNKNOWN says the measurement had no power, not that the run was wrong."""
    spec = CATALOG[name]
    failed = [c for c, v in checks.items() if v == "fail"]
    if spec.kind == "fault":
        if failed:
            return Judgement(True, run_verdict, f"detected by {', '.join(failed)}")
        missing = [n for n in spec.needs if n in lacking]
        if missing:
            seers = [d for d in spec.detectors if set(CHECK_NEEDS.get(d, ())) & set(missing)] or list(spec.detectors)
            why = "; ".join(dict.fromkeys(lacking[n] for n in missing))
            plural = "checks" if len(seers) > 1 else "check"
            reason = f"{why}: the {plural} that would see this ({', '.join(seers)}) can never PASS here either"
            if error:
                reason += f"; the run stopped early: {error}"
            return Judgement(True, "n/a", reason, applicable=False)
        reason = "not detected by any check"
        if injections == 0:
            reason += "; never injected (nothing in the responses for it to act on)"
        if error:
            reason += f"; the run stopped early: {error}"
        return Judgement(False, run_verdict, reason)
    if failed:
        return Judgement(False, run_verdict, f"a benign control FAILed {', '.join(failed)}")
    if error:
        return Judgement(False, run_verdict, f"the run stopped early: {error}")
    if skipped:
        return Judgement(False, run_verdict, f"scenario(s) skipped: {', '.join(sorted(skipped))}")
    unknown = [c for c, v in checks.items() if v == "unknown" and c not in set(audit_checks)]
    excused = {c: [n for n in CHECK_NEEDS.get(c, ()) if n in lacking] for c in unknown}
    unexcused = [c for c in unknown if not excused[c]]
    if unexcused:
        return Judgement(False, run_verdict, f"UNKNOWN with every capability it needs present: {', '.join(unexcused)}")
    if unknown:
        parts = ", ".join(f"{c} ({'+'.join(excused[c])})" for c in unknown)
        return Judgement(True, run_verdict, f"UNKNOWN only where the target lacks a capability: {parts}")
    if run_verdict != "pass":
        return Judgement(False, run_verdict, f"run verdict {run_verdict.upper()} with no check deciding it")
    return Judgement(True, run_verdict, "")


def overall_ok(judgements: dict[str, Judgement]) -> bool:
    """Every row good, and where faults were run at least one of them was applicable (a target on
    which nothing can be shown must not pass the selftest)."""
    faults = [name for name in judgements if CATALOG[name].kind == "fault"]
    return all(j.good for j in judgements.values()) and (not faults or any(judgements[f].applicable for f in faults))


async def _probe(target: str) -> Capabilities:
    async with TargetClient(target) as client:
        return await probe_target(client)


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
    judgements: dict[str, Judgement] = {}
    with ExitStack() as stack:
        target = args.target
        if target is None:
            try:
                target = stack.enter_context(EmbeddedServer()).base_url
            except LaunchError as exc:
                console.print(f"error: {exc}")
                return 2
        try:
            caps = asyncio.run(_probe(target))
        except ProbeError as exc:
            console.print(f"error: {exc}")
            return 2
        offer = offered(caps)
        lacking = {n: why for n, why in offer.items() if why is not None}
        for n, why in lacking.items():
            console.print(f"[yellow]target lacks {n}[/]: {why}")
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
            timing: dict[str, str] = {}
            notes: list[str] = []
            if name in TIMING_FAULTS and not args.no_timing:
                if "salt" in lacking:  # the salted audit presumes salts that separate tenants
                    notes.append(f"timing audit (salted) not run: {lacking['salt']}")
                else:
                    console.print(f"[bold]{name}[/]: timing audit (salted) ...")
                    timing = _timing_checks(target, name, args.seed)
                    checks.update(timing)
            meta = out.report["metadata"]
            j = judge(name, checks, out.verdict.value, lacking, audit_checks=timing, injections=injected,
                      error=out.error, skipped=meta.get("skipped_scenarios"))
            judgements[name] = j
            rows[name] = {
                "kind": spec.kind, "verdict": j.verdict, "run_verdict": out.verdict.value, "good": j.good,
                "applicable": j.applicable, "reason": "; ".join(x for x in [j.reason, *notes] if x),
                "needs": list(spec.needs), "lacking": [n for n in spec.needs if n in lacking],
                "injections": injected,
                "checks": checks,
                "detected_by": [c for c, v in checks.items() if v == "fail"],
                "requests_to_detection": _requests_to_detection(out.report, out_dir / "history.jsonl"),
                "requests": meta.get("requests"),
                "error": out.error,
            }
    ok = overall_ok(judgements)
    checks = sorted({c for r in rows.values() for c in r["checks"]})
    table = Table(title="selftest: fault x check (X = detected: the check FAILed; columns numbered below)")
    for col in ["fault", "kind", *[f"{i + 1}" for i in range(len(checks))], "verdict", "injected", "to detect"]:
        table.add_column(col, no_wrap=True, min_width=len(col))
    table.add_column("reason", min_width=24)
    for name, r in rows.items():
        cells = ["X" if r["checks"].get(c) == "fail" else "." for c in checks]
        colour = "[yellow]" if not r["applicable"] else "[green]" if r["good"] else "[red]"
        table.add_row(name, r["kind"], *cells, colour + r["verdict"].upper() + "[/]",
                      str(r["injections"]), str(r["requests_to_detection"] or "-"), r["reason"] or "-")
    console.print(table)
    console.print("  ".join(f"{i + 1}={c}" for i, c in enumerate(checks)))
    console.print("to detect: requests sent before the first violation was fully shown; N/A: the target lacks "
                  "what any check would need to see that fault (not counted against the exit code)")
    args.report_dir.mkdir(parents=True, exist_ok=True)
    target_caps = {n: {"offered": why is None, "why_not": why, "what": NEEDS[n]} for n, why in offer.items()}
    (args.report_dir / "selftest.json").write_text(json.dumps({
        "ok": ok, "target": target, "capabilities": target_caps,
        "not_applicable": {n: r["reason"] for n, r in rows.items() if not r["applicable"]},
        "faults": rows}, indent=2))
    console.print(f"matrix: {args.report_dir / 'selftest.json'}  page: {write_selftest_html(args.report_dir)}")
    na = [n for n, r in rows.items() if not r["applicable"]]
    if ok:
        console.print("[green]every applicable fault detected; no benign control failed[/]"
                      + (f" ({len(na)} not applicable on this target: {', '.join(na)})" if na else ""))
    else:
        console.print("[red]selftest failed: an applicable fault went undetected, a benign control failed or ended "
                      "UNKNOWN for a reason other than a missing target capability, or no fault was applicable[/]")
    return 0 if ok else 1
