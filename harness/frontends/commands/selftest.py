"""`harness selftest`: prove every check can fail, on the user's own stack.

Runs the relevant scenarios through the fault-injecting proxy once per registered fault and prints a
fault x check matrix (detected = that check FAILed). Benign controls must never produce a FAIL.

Capability-aware, failing closed. The target is probed first (the same probe a run takes); a fault
whose needs (`Fault.needs`) the target does not verifiably offer is still run, but if no check
detects it the row is "n/a" with the reason, and it does not count against the exit code. A benign
control is good when no check FAILed and every check of its run that did not PASS (or was n/a) is
UNKNOWN only because the target lacks what that check needs (`Check.needs` in the registry). Exit 0 only
when every applicable fault is detected, at least one fault was applicable, and every benign
control is good; 1 otherwise.

Each fault runs through `FaultedStack` and the engine; the row is read from the `RunResult` in
memory, its injections are the run's `FaultInjection` records. Every table here (which faults,
their scenarios, which also go through the timing audit) comes from the `Fault` objects.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from harness.audit.timing import AuditConfig, audit
from harness.checks.base import Need, all_checks
from harness.client import TargetClient
from harness.engine import RunOptions
from harness.faults import all_faults, get
from harness.faults.stack import FaultedStack
from harness.frontends.cli import command
from harness.frontends.replica_death import ROW as DEATH_ROW
from harness.frontends.replica_death import replica_death_row
from harness.frontends.runs import run_files
from harness.history.record import FaultInjection
from harness.probe.capabilities import Capabilities, ProbeError
from harness.probe.needs import lacking as lacking_needs
from harness.probe.needs import offered, probe_target
from harness.reporters.html_selftest import write_selftest_html
from harness.result import RunResult
from harness.scenario.library import library_path
from harness.stacks import make_stack, stack_names
from harness.stacks.base import Stack
from harness.stacks.external import ExternalStack
from harness.stacks.vllm import EmbeddedServer, LaunchError
from harness.verdict import Verdict

LIBRARY = library_path()


def check_needs() -> dict[str, tuple[str, ...]]:
    """What each registered check needs from the target (`Need` values), by check name."""
    return {c.name: tuple(n.value for n in c.needs) for c in all_checks()}


@dataclass(frozen=True)
class Judgement:
    """How one selftest row counts: good (not against the exit code), its shown verdict, and why."""

    good: bool
    verdict: str
    reason: str
    applicable: bool = True


def judge(name: str, checks: dict[str, str], run_verdict: str, lacking: dict[str, str], *,
          audit_checks: Iterable[str] = (), injections: int | None = None, error: str | None = None,
          skipped: dict[str, str] | None = None, cited: Iterable[str] | None = None,
          power_only: Iterable[str] = ()) -> Judgement:
    """Decide one row from its check verdicts and what the target lacks (need -> why, see `offered`).

    A fault: detected is good, and detected means injections > 0 (when counted) and one of the
    fault's own detectors FAILed with a violation that cites an injected request (`cited`: the
    checks that did; a timing-audit FAIL counts, the audit measures the fault itself; None: not
    known, every FAIL counts, for rows built by hand). Undetected with a need the target lacks is
    n/a (good, not applicable); otherwise bad. A benign control: bad on any FAIL, a run that stopped
    early or skipped a scenario, or an UNKNOWN in a check whose needs the target offers (or that
    names no needs); good otherwise. Checks in `audit_checks` (the timing audit) count for FAILs only, as
    they always did: their UNKNOWN says the measurement had no power, not that the run was wrong. So
    do checks in `power_only` for a benign control: UNKNOWN only because, on a nondeterministic
    target, the run had too little power for the leak rate it claims to exclude (it held otherwise)."""
    spec = get(name)
    needs_of = check_needs()
    failed = [c for c, v in checks.items() if v == "fail"]
    if spec.kind == "blind":
        return judge_blind(name, checks, run_verdict, injections)
    if spec.kind == "fault":
        showing = set(audit_checks) | set(failed if cited is None else cited)
        own = [c for c in failed if c in showing and (c in spec.detectors or not spec.detectors)]
        if own and injections != 0:
            return Judgement(True, run_verdict, f"detected by {', '.join(own)}")
        if failed and injections != 0:
            return Judgement(False, run_verdict, f"{', '.join(failed)} FAILed, but no violation of the fault's own "
                             f"detectors ({', '.join(spec.detectors)}) cites an injected request")
        missing = [n.value for n in spec.needs if n.value in lacking]
        if missing:
            seers = [d for d in spec.detectors if set(needs_of.get(d, ())) & set(missing)] or list(spec.detectors)
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
    weak = [c for c, v in checks.items() if v == "unknown" and c in set(power_only)]
    unknown = [c for c, v in checks.items() if v == "unknown" and c not in set(audit_checks) | set(weak)]
    excused = {c: [n for n in needs_of.get(c, ()) if n in lacking] for c in unknown}
    unexcused = [c for c in unknown if not excused[c]]
    if unexcused:
        return Judgement(False, run_verdict, f"UNKNOWN with every capability it needs present: {', '.join(unexcused)}")
    if weak and not unknown:
        return Judgement(True, run_verdict, f"UNKNOWN only for lack of power against the target's own noise: "
                                            f"{', '.join(weak)} held otherwise")
    if unknown:
        parts = ", ".join(f"{c} ({'+'.join(excused[c])})" for c in unknown)
        return Judgement(True, run_verdict, f"UNKNOWN only where the target lacks a capability: {parts}")
    if run_verdict != "pass":
        return Judgement(False, run_verdict, f"run verdict {run_verdict.upper()} with no check deciding it")
    return Judgement(True, run_verdict, "")


def judge_blind(name: str, checks: dict[str, str], run_verdict: str, injections: int | None) -> Judgement:
    """A blinding fault hides what a check needs: good only when something was hidden (injections >
    0, when counted), the run is UNKNOWN and one of the fault's own detectors is UNKNOWN. A PASS
    means the run claimed what it could not see; a FAIL blames the server for the harness's blindness."""
    spec = get(name)
    if injections == 0:
        return Judgement(False, run_verdict, "never injected: nothing was hidden")
    blinded = [c for c in spec.detectors if checks.get(c) == "unknown"]
    if run_verdict == "unknown" and blinded:
        return Judgement(True, run_verdict, f"failed closed: {', '.join(blinded)} UNKNOWN")
    got = ", ".join(f"{c} {checks.get(c, 'absent')}" for c in spec.detectors)
    return Judgement(False, run_verdict, f"expected UNKNOWN from {', '.join(spec.detectors)}, got run verdict "
                     f"{run_verdict.upper()} ({got})")


def scenarios_for(name: str, selected: Iterable[str], without_adapters: bool | None = None) -> list[str]:
    """The scenarios a row runs: its own, and for a control that covers every scenario
    (`Fault.controls_every_scenario`) each selected fault's scenarios too. With `without_adapters`
    (the selftest launched the servers), a control covers only the faults that run on the same
    server as it: those that need a server without LoRA adapters (True; then not its own
    scenarios) or the others (False)."""
    spec = get(name)
    own = list(spec.scenarios) if not without_adapters else []
    if spec.kind != "benign" or not spec.controls_every_scenario:
        return list(spec.scenarios)
    faults = [get(f) for f in selected if get(f).kind != "benign"]
    if without_adapters is not None:
        faults = [f for f in faults if bool(f.without_adapters) is without_adapters]
    return list(dict.fromkeys([*own, *(s for f in faults for s in f.scenarios)]))


WITHOUT_ADAPTERS_ROW = " (without adapters)"
"""Suffix of a covering control's second row, on the server without LoRA adapters."""


def row_plan(faults: list[str], under: str | None, launched: bool) -> list[tuple[str, str, bool]]:
    """(fault, row name, on the server without LoRA adapters) for every row, in order. Where the
    selftest launched the servers, a control that covers every scenario gets a second row on the
    server without adapters when a selected fault runs there (`Fault.without_adapters`)."""
    plan = []
    for name in faults:
        spec = get(name)
        row = name if under in (None, name) else f"{name}+{under}"
        plan.append((name, row, launched and bool(spec.without_adapters)))
        if (launched and spec.kind == "benign" and spec.controls_every_scenario
                and scenarios_for(name, faults, without_adapters=True)):
            plan.append((name, row + WITHOUT_ADAPTERS_ROW, True))
    return plan


def overall_ok(judgements: dict[str, Judgement]) -> bool:
    """Every row good, and where faults were run at least one of them was applicable (a target on
    which nothing can be shown must not pass the selftest)."""
    faults = [name for name in judgements if get(base_fault(name)).kind == "fault"]
    return all(j.good for j in judgements.values()) and (not faults or any(judgements[f].applicable for f in faults))


async def _probe(target: str) -> Capabilities:
    async with TargetClient(target) as client:
        return await probe_target(client)


def _timing_checks(target: str, fault: str, seed: int) -> dict[str, str]:
    """Run the salted timing audit through the fault; check name -> verdict."""
    with FaultedStack(ExternalStack(target), fault, rate=1.0, seed=seed) as stack:
        result = audit(AuditConfig(target=stack.base_url, policy="salted"))
    return {c.name: c.verdict.value for c in result.checks}


def base_fault(row: str) -> str:
    """The fault a selftest row is about: "flip" for the row "flip+drift" (flip over a benign control)."""
    return row.removesuffix(WITHOUT_ADAPTERS_ROW).split("+", 1)[0]


def power_only(result: RunResult) -> list[str]:
    """The checks of `result` that are UNKNOWN only for lack of statistical power (they held otherwise)."""
    return [r.name for r in result.checks if r.verdict is Verdict.UNKNOWN and r.evidence.get("unknown_for_power_only")]


def citing_checks(result: RunResult, fault: str | None = None) -> list[str]:
    """The FAILed checks with a violation that names an operation the fault proxy changed (only
    `fault`'s injections, when given: a benign control underneath changes operations too)."""
    injected = {e.op_id for e in result.history.events
                if isinstance(e, FaultInjection) and e.op_id and (fault is None or e.fault == fault)}
    return [r.name for r in result.checks
            if r.verdict is Verdict.FAIL and any(set(v.op_ids) & injected for v in r.violations)]


class LazyServer:
    """An embedded vLLM server launched on first use (with `options`; `lora=False` for the rows of
    faults that need a server without adapters, `Fault.without_adapters`), shared by the rows that
    use it and stopped with `stack`; what its probe found lacking is kept with it."""

    def __init__(self, stack: ExitStack, console: Console, **options: Any) -> None:
        self.stack, self.console, self.options = stack, console, options
        self.server: EmbeddedServer | None = None
        self.lacking: dict[str, str] = {}

    def __call__(self, why: str = "") -> EmbeddedServer:
        """The server, launched now if it is not yet (`why`: said when it is launched)."""
        if self.server is None:
            if why:
                self.console.print(f"  launching an embedded server: {why}")
            self.server = self.stack.enter_context(EmbeddedServer(**self.options))
            self.lacking = lacking_needs(asyncio.run(_probe(self.server.base_url)))
        return self.server


def run_fault(name: str, target: str, scenarios: Path, out_dir: Path, seed: int,
              files: list[str] | None = None, under: str | None = None,
              base: Stack | None = None, nemesis: tuple[str, ...] = (),
              adapter_sources: dict[str, Path] | None = None,
              known_findings: Path | None = None) -> tuple[RunResult, int]:
    """One fault's run: its scenarios (or `files`) through `FaultedStack` and the engine, reports
    written to `out_dir`; the result and how many injections of `name` it recorded. With `under`,
    a benign fault's proxy sits between the fault's proxy and the target (the target's own
    behaviour, e.g. `drift`'s nondeterminism), and the fault must still be detected through it.
    With `nemesis`, those nemeses act on the server during the run (`harness selftest --nemesis`)."""
    inner: Stack = base if base is not None else ExternalStack(target)  # base: a launched fleet (its replicas)
    if under is not None and under != name:
        inner = FaultedStack(inner, under, rate=1.0, seed=seed)
    stack = FaultedStack(inner, name, rate=1.0, seed=seed)
    # Replays of incidents are opted in: the proxy in front is the selftest's own, and an availability
    # fault is detected only through the incident rule's replays (`harness.incidents`).
    chosen = files if files is not None else get(name).scenarios
    # Asking for a nemesis is consent to its disruptive acts (cache resets) on a target not launched here.
    options = RunOptions(replay_incidents=True, nemesis=nemesis, adapter_sources=adapter_sources,
                         allow_disruptive=bool(nemesis))
    result = run_files([scenarios / s for s in chosen], stack, options, out_dir, known_findings,
                       console=Console(stderr=True, quiet=True))
    return result, sum(isinstance(e, FaultInjection) and e.fault == name for e in result.history.events)


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default=None, help="base URL (default: start the embedded vLLM server)")
    p.add_argument("--stack", choices=stack_names(), default="vllm",
                   help="without --target: the stack to launch; vllm-fleet runs every fault through the router "
                   "in front of the replicas (salt-drop there is the router forgetting the salt), then the row "
                   f"{DEATH_ROW}: a fresh fleet whose replica r1 dies mid-run")
    p.add_argument("--report-dir", type=Path, default=Path("reports/selftest"))
    p.add_argument("--fault", action="append", default=None,
                   help=f"only these faults (repeatable; {DEATH_ROW} with --stack vllm-fleet)")
    p.add_argument("--scenarios", type=Path, default=LIBRARY, help="scenario folder (default: the library)")
    p.add_argument("--seed", type=int, default=0, help="the proxy's fault RNG seed")
    p.add_argument("--with", dest="under", default=None, metavar="BENIGN",
                   help="run every fault over this benign control (e.g. drift: a nondeterministic target); "
                   "rows are named FAULT+BENIGN")
    p.add_argument("--nemesis", default=None, metavar="NAME[,NAME]",
                   help="the fault x nemesis matrix: every fault (and benign control) again under each nemesis, "
                   "on an embedded server launched for each (README, \"Nemeses\"); --no-timing implied")
    p.add_argument("--known-findings", type=Path, default=None, metavar="FILE",
                   help="acknowledged server bugs (e.g. known-findings.yaml), matched by exact signature in every "
                   "row as in `kvbleed run`: a known 500 that a benign control provokes on the adversarial scenario "
                   "does not FAIL it, and a fault must still be detected by its own violations")
    p.add_argument("--no-timing", action="store_true",
                   help="skip the timing audit (run through "
                   f"{', '.join(f.name for f in all_faults() if f.timing_audit)}; about a minute each)")


def requests_to_detection(result: RunResult) -> int | None:
    """How many requests (in the history's order) were sent before some violation was fully shown:
    for each violation, the position of the last of its requests; the smallest over violations."""
    position = {op.op_id: i + 1 for i, op in enumerate(result.history.ops)}
    shown = [max((position.get(i, 0) for i in v.op_ids), default=0) for v in result.violations]
    shown = [n for n in shown if n]  # a run-level violation (e.g. server-counters) names no request
    return min(shown) if shown else None


@command("selftest", _configure)
def selftest(args: argparse.Namespace) -> int:
    """Run each registered fault through the proxy and show which checks detect it (exit 0: all detected)."""
    console = Console(stderr=True, width=max(Console(stderr=True).width, 132))
    known = [f.name for f in all_faults()]
    fleet_rows = args.stack == "vllm-fleet" and args.target is None and not getattr(args, "nemesis", None)
    death = fleet_rows and (args.fault is None or DEATH_ROW in args.fault)
    chosen = [f for f in args.fault or [] if not (fleet_rows and f == DEATH_ROW)]
    faults = chosen if args.fault else [f.name for f in all_faults() if f.scenarios]
    unknown = [f for f in faults if f not in known]
    if unknown:
        extra = f" (and {DEATH_ROW} with --stack vllm-fleet)" if not fleet_rows else f", {DEATH_ROW}"
        console.print(f"error: unknown fault(s) {unknown}; known: {sorted(known)}{extra}")
        return 2
    if getattr(args, "nemesis", None):
        from harness.frontends.selftest_nemesis import nemesis_matrix

        return nemesis_matrix(args, faults, console)
    under = args.under
    if under is not None and (under not in known or get(under).kind != "benign"):
        console.print(f"error: --with needs a benign control; known: "
                      f"{sorted(f.name for f in all_faults('benign'))}")
        return 2
    rows: dict[str, dict[str, Any]] = {}
    judgements: dict[str, Judgement] = {}
    with ExitStack() as stack:
        target = args.target
        fleet: Stack | None = None
        if target is None:
            try:
                if args.stack == "vllm":
                    target = stack.enter_context(EmbeddedServer()).base_url
                else:
                    launched = make_stack(None, args.stack)
                    stack.callback(launched.stop)
                    target = launched.start()
                    fleet = launched if launched.traits.replicas > 1 else None
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
        replicas = fleet.traits.replicas if fleet is not None else 0
        plain = LazyServer(stack, console, lora=False)
        embedded = args.target is None and args.stack == "vllm"
        for name, row, on_plain in row_plan(faults, under, embedded):
            spec = get(name)
            console.print(f"[bold]{row}[/] ({spec.kind}) ...")
            url = target
            if on_plain:
                why = spec.without_adapters or "a control covering the faults that run there"
                try:
                    url = plain(f"without LoRA adapters, for {row} and the later rows that need one ({why})").base_url
                except (LaunchError, ProbeError) as exc:
                    console.print(f"error: {exc}")
                    return 2
            out, injected = run_fault(name, url, args.scenarios, args.report_dir / row, args.seed,
                                      scenarios_for(name, faults, on_plain if embedded else None), under=under,
                                      base=fleet, known_findings=args.known_findings)
            checks = {r.name: r.verdict.value for r in out.checks}
            timing: dict[str, str] = {}
            notes: list[str] = []
            if spec.timing_audit and not args.no_timing:
                if "salt" in lacking:  # the salted audit presumes salts that separate tenants
                    notes.append(f"timing audit (salted) not run: {lacking['salt']}")
                else:
                    console.print(f"[bold]{name}[/]: timing audit (salted) ...")
                    timing = _timing_checks(target, name, args.seed)
                    checks.update(timing)
            j = judge(name, checks, out.verdict.value, plain.lacking if on_plain else lacking, audit_checks=timing,
                      injections=injected,
                      error=out.error, skipped=out.skipped or None, cited=citing_checks(out, name),
                      power_only=power_only(out))
            judgements[row] = j
            needs = [n.value for n in spec.needs]
            rows[row] = {
                "kind": spec.kind, "verdict": j.verdict, "run_verdict": out.verdict.value, "good": j.good,
                "applicable": j.applicable, "reason": "; ".join(x for x in [j.reason, *notes] if x),
                "needs": needs, "lacking": [n for n in needs if n in lacking],
                "injections": injected,
                "checks": checks,
                "detected_by": [c for c, v in checks.items() if v == "fail"],
                "requests_to_detection": requests_to_detection(out),
                "requests": out.meta.requests,
                "error": out.error,
            }
    ok = overall_ok(judgements)
    if death and replicas:  # the proxy faults' fleet is stopped by now
        console.print(f"[bold]{DEATH_ROW}[/] (fleet): a fresh fleet whose replica r1 dies mid-run ...")
        rows[DEATH_ROW] = replica_death_row(replicas, args.scenarios, args.report_dir / DEATH_ROW)
        ok = ok and rows[DEATH_ROW]["good"]
    columns = sorted({c for r in rows.values() for c in r["checks"]})
    table = Table(title="selftest: fault x check (X = detected: the check FAILed; columns numbered below)")
    for col in ["fault", "kind", *[f"{i + 1}" for i in range(len(columns))], "verdict", "injected", "to detect"]:
        table.add_column(col, no_wrap=True, min_width=len(col))
    table.add_column("reason", min_width=24)
    for name, r in rows.items():
        cells = ["X" if r["checks"].get(c) == "fail" else "." for c in columns]
        colour = "[yellow]" if not r["applicable"] else "[green]" if r["good"] else "[red]"
        table.add_row(name, r["kind"], *cells, colour + r["verdict"].upper() + "[/]",
                      str(r["injections"]), str(r["requests_to_detection"] or "-"), r["reason"] or "-")
    console.print(table)
    console.print("  ".join(f"{i + 1}={c}" for i, c in enumerate(columns)))
    console.print("to detect: requests sent before the first violation was fully shown; N/A: the target lacks "
                  "what any check would need to see that fault (not counted against the exit code)")
    args.report_dir.mkdir(parents=True, exist_ok=True)
    target_caps = {n: {"offered": why is None, "why_not": why, "what": Need(n).description} for n, why in offer.items()}
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
