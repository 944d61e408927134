"""Running the kill matrix: the unmutated baseline once per server configuration, then each mutant.

Each subject (the baseline, or one mutant) is one server start (`MutatedServer`), its scenarios
run one by one through the engine (one `RunResult` per scenario, reports under the subject's
folder), then the salted timing audit where the catalog asks for it. Baselines are kept in
`mutants.json` by configuration and seed and reused by later invocations, so the matrix can be run
in parts (`--mutant`) and merged: rows of mutants not run this time are kept as they were.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from harness.audit.timing import AuditConfig, audit
from harness.engine import RunOptions
from harness.frontends.cli import PROG
from harness.frontends.runs import run_files
from harness.mutants.catalog import Mutant
from harness.mutants.hits import Hits, read_hits
from harness.mutants.judge import Outcome, Row, judge, kill_rate, overall_ok
from harness.mutants.stack import MutatedServer
from harness.reporters.mutants_json import read_mutants_json, write_mutants_json
from harness.result import RunResult
from harness.stacks.process import LaunchError

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ROOT / "scenarios"
KNOWN = ROOT / "known-findings.yaml"
TIMING = "timing-audit"


@dataclass(frozen=True)
class MatrixOptions:
    """What `harness mutants` was asked for."""

    report_dir: Path
    seed: int | None = None
    full: bool = False
    timing: bool = True
    known_findings: Path | None = KNOWN
    scenarios: tuple[str, ...] = ()
    """Override every mutant's scenarios (file names in the library)."""
    rebaseline: bool = False


@dataclass
class Subject:
    """What one server start gave."""

    outcomes: list[Outcome] = field(default_factory=list)
    hits: Hits = field(default_factory=Hits)
    error: str | None = None
    wall_s: float = 0.0
    startup_s: float | None = None


def outcome_of(result: RunResult, scenario: str, folder: Path) -> Outcome:
    """One scenario's run as the judge reads it."""
    first = {r.name: (r.violations[0].message if r.violations else "") for r in result.checks
             if r.verdict.value == "fail"}
    seed = next(iter(result.meta.seeds.values()), None)
    return Outcome(scenario, result.verdict.value, {r.name: r.verdict.value for r in result.checks},
                   result.meta.requests, result.error, first, seed, str(folder), tuple(result.reproducers))


def scenarios_for(m: Mutant, opts: MatrixOptions) -> list[str]:
    """The scenario files a mutant runs, and the timing audit's key where it runs too."""
    if opts.scenarios:
        names = list(opts.scenarios)
    elif opts.full:
        names = sorted(p.name for p in LIBRARY.glob("*.yaml"))
    else:
        names = list(m.scenarios)
    return names + ([TIMING] if m.timing_audit and opts.timing else [])


def run_subject(mutant: str | None, server_args: tuple[str, ...], scenarios: list[str], folder: Path,
                opts: MatrixOptions, console: Console) -> Subject:
    """Start the server (mutated or not), run `scenarios` on it, read its hit counts, stop it."""
    t0 = time.monotonic()
    folder.mkdir(parents=True, exist_ok=True)
    stack = MutatedServer(mutant=mutant, hits_dir=folder / "hits", server_args=list(server_args))
    subject = Subject()
    try:
        stack.start()
        subject.startup_s = stack.startup_s
    except LaunchError as exc:
        subject.error = str(exc)
        subject.hits = read_hits(folder / "hits")
        subject.wall_s = time.monotonic() - t0
        return subject
    quiet = Console(stderr=True, quiet=True)
    try:
        early = read_hits(folder / "hits")
        if mutant is not None and not (early.installed or early.missing):
            # every patched module is imported before the server reports healthy: a server without
            # a record is not ours (another process answering on the port) or lost its patches
            subject.error = "the server answering on its port shows no installed patch"
            scenarios = []
        for name in scenarios:
            if not stack.alive:
                subject.error = f"the server died before {name}"
                break
            console.print(f"  {mutant or 'baseline'}: {name} ...")
            if name == TIMING:
                result = audit(AuditConfig(target=stack.base_url, policy="salted", seed=opts.seed))
                checks = {c.name: c.verdict.value for c in result.checks}
                first = {c.name: (c.violations[0].message if c.violations else "") for c in result.checks
                         if c.verdict.value == "fail"}
                verdict = "fail" if "fail" in checks.values() else "pass" if set(checks.values()) <= {"pass"} \
                    else "unknown"
                subject.outcomes.append(Outcome(TIMING, verdict, checks, len(result.rounds), None, first, result.seed))
                continue
            out = folder / Path(name).stem
            # kills are decided by what each scenario's checks show, the same way on the baseline and
            # the mutant: a finding's own reproducer (`harness.known_repro`) is not re-run here
            options = RunOptions(seed=opts.seed, recheck_known=False)
            run = run_files([LIBRARY / name], stack, options, out, known_findings=opts.known_findings, console=quiet)
            subject.outcomes.append(outcome_of(run, Path(name).stem, out))
    finally:
        subject.hits = read_hits(folder / "hits")
        stack.stop()
        subject.wall_s = time.monotonic() - t0
    return subject


def _key(name: str) -> str:
    return name if name == TIMING else Path(name).stem


def reproducer(name: str, kills: list[dict[str, Any]], outcomes: list[Outcome], seed: int | None) -> dict[str, Any]:
    """The smallest killing run (fewest requests) as a command and its evidence."""
    by = {o.scenario: o for o in outcomes}
    killing = sorted({k["scenario"] for k in kills}, key=lambda s: (by[s].requests if s in by else 0, s))
    s = killing[0]
    o = by.get(s)
    k = next(k for k in kills if k["scenario"] == s)
    target = "--no-timing --scenario salted-tenants.yaml" if s == TIMING else f"--scenario {s}.yaml"
    cmd = f"{PROG} mutants --mutant {name} {target}" + (f" --seed {seed}" if seed is not None else "")
    return {"scenario": s, "seed": o.seed if o else None, "requests": o.requests if o else 0, "check": k["check"],
            "violation": k["violation"], "command": cmd, "folder": o.folder if o else "",
            "reproducers": list(o.reproducers) if o else []}


def run_matrix(mutants: list[Mutant], opts: MatrixOptions, console: Console,
               subject: Callable[..., Subject] = run_subject) -> dict[str, Any]:
    """Run the baselines each selected mutant needs (unless stored for the same seed), then the
    mutants; merge into `report_dir/mutants.json` after each one and return the state."""
    opts.report_dir.mkdir(parents=True, exist_ok=True)
    state = read_mutants_json(opts.report_dir)
    seed_key = "library" if opts.seed is None else str(opts.seed)

    def save() -> None:
        rows = {n: (r["kind"], Row(r["status"], r["good"], r["reason"], applicable=r["applicable"]))
                for n, r in state["mutants"].items()}
        killed, applicable = kill_rate(rows)
        state["kill_rate"] = {"killed": killed, "applicable": applicable}
        state["ok"] = overall_ok(rows)
        state["wall_s"] = round(sum(b.get("wall_s", 0.0) for b in state["baselines"].values())
                                + sum(r.get("wall_s", 0.0) for r in state["mutants"].values()), 1)
        write_mutants_json(state, opts.report_dir)

    configs: dict[str, tuple[tuple[str, ...], list[str]]] = {}
    for m in mutants:
        args, names = configs.setdefault(m.config, (m.server_args, []))
        names += [n for n in scenarios_for(m, opts) if n not in names]
    for config, (args, names) in configs.items():
        key = f"{config}/{seed_key}"
        stored = state["baselines"].get(key, {"outcomes": {}, "wall_s": 0.0})
        todo = names if opts.rebaseline else [n for n in names if _key(n) not in stored["outcomes"]]
        if todo:
            console.print(f"[bold]baseline[/] ({config}, seeds {seed_key}): {', '.join(todo)}")
            sub = subject(None, args, todo, opts.report_dir / "baseline" / config, opts, console)
            if sub.error:
                console.print(f"[red]baseline {config}: {sub.error}[/]")
            for o in sub.outcomes:
                stored["outcomes"][o.scenario] = o.to_json()
            stored["wall_s"] = round(stored.get("wall_s", 0.0) + sub.wall_s, 1)
            stored["server_args"] = list(args)
            state["baselines"][key] = stored
            save()
    for m in mutants:
        names = scenarios_for(m, opts)
        console.print(f"[bold]{m.name}[/] ({m.kind}): {', '.join(names)}")
        sub = subject(m.name, m.server_args, names, opts.report_dir / m.name, opts, console)
        base = {k: Outcome.from_json(v)
                for k, v in state["baselines"].get(f"{m.config}/{seed_key}", {"outcomes": {}})["outcomes"].items()}
        row = judge(m.kind, sub.outcomes, base, sub.hits, sub.error)
        kills = [{"scenario": k.scenario, "check": k.check, "violation": k.violation} for k in row.kills]
        state["mutants"][m.name] = {
            "kind": m.kind, "status": row.status, "good": row.good, "applicable": row.applicable,
            "reason": row.reason, "bug_class": m.bug_class, "symbols": list(m.symbols), "upstream": list(m.upstream),
            "scenarios": names, "why": m.why, "config": m.config, "seeds": seed_key,
            "killed_by": sorted({k["check"] for k in kills}), "kills": kills, "hits": sub.hits.to_json(),
            "outcomes": {o.scenario: o.to_json() for o in sub.outcomes}, "error": sub.error,
            "wall_s": round(sub.wall_s, 1), "startup_s": round(sub.startup_s or 0.0, 1),
            "reproducer": reproducer(m.name, kills, sub.outcomes, opts.seed) if kills else None,
            "gap": m.gap if row.status in ("survived", "not-exercised") else "",
            "ran_unix": time.time(),
        }
        colour = "green" if row.good else "red"
        console.print(f"  [{colour}]{row.status}[/]: {row.reason} ({sub.wall_s:.0f} s)")
        save()
    return state
