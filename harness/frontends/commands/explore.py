"""`harness explore` (hypothesis search for a failing scenario) and `harness replay` (re-run a saved one)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from harness.adversary.cases import DEFAULT_BUDGET
from harness.frontends.cli import command


def _configure_explore(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default=None, help="base URL (default: start the embedded vLLM server once)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--examples", type=int, default=None, help="scenarios to generate (default 20)")
    budget.add_argument("--time", type=float, default=None, metavar="SECONDS",
                        help="keep generating for this long (shrinking a failure may overrun it)")
    p.add_argument("--seed", type=int, default=None, help="hypothesis seed (default: random, printed)")
    p.add_argument("--report-dir", type=Path, default=Path("reports/explore"),
                   help="per-example report (current/), failing runs (failures/HASH/), explore.json")
    p.add_argument("--fault", default=None, help="run every example through the fault proxy with this fault "
                   "(demonstrates detection; counterexamples then go to REPORT_DIR/found/)")
    p.add_argument("--found-dir", type=Path, default=None,
                   help="where minimal counterexamples are saved (default scenarios/found/)")
    p.add_argument("--shrink-runs", type=int, default=20,
                   help="most runs hypothesis' shrinker may spend on a failure (default 20)")
    p.add_argument("--reduce-runs", type=int, default=30,
                   help="most runs the structural reduction may spend after it (default 30)")
    p.add_argument("--confirm", type=int, default=1,
                   help="extra runs a first failure must also fail before it is shrunk (default 1)")
    p.add_argument("--timeout", type=float, default=60.0, help="per-request timeout in seconds")
    p.add_argument("--known-findings", type=Path, default=None, metavar="FILE",
                   help="the exact-signature baseline of acknowledged server bugs, as for `harness run`: a violation "
                   "matching it is reported apart and ends no search (e.g. known-findings.yaml)")
    p.add_argument("--no-adapters", action="store_true",
                   help="leave LoRA adapters out of generated scenarios (e.g. while a known adapter bug is open)")
    p.add_argument("--no-solo", action="store_true", help="skip the solo (cache transparency) replay")
    p.add_argument("--no-counterfactual", action="store_true", help="skip the counterfactual re-runs")
    p.add_argument("--adversary", action="store_true",
                   help="give every generated scenario the adversarial tenant: schema-aware hostile values, in an "
                   "order drawn from each example's seed, fired concurrently with the victims, so a long search "
                   "reaches values and pairs the default run's budget leaves out")
    p.add_argument("--adversary-budget", type=int, default=None, metavar="N",
                   help="with --adversary: hostile requests per example (default: the default run's "
                   f"{DEFAULT_BUDGET}; a smaller budget gives more, shorter examples)")


def _print_example(console: Console, counter: list[int]):  # type: ignore[no-untyped-def]
    from harness.frontends.explore import ExampleStats
    from harness.scenario.model import Scenario

    style = {"pass": "green", "fail": "bold red", "unknown": "yellow"}

    def show(scenario: Scenario, stats: ExampleStats, phase: str) -> None:
        counter[0] += 1
        v = stats.verdict.value
        turns = max(u.turns for u in scenario.users)
        adapters = sum(t.adapter is not None for t in scenario.tenants)
        what = (f"{len(scenario.users)}u/{len(scenario.tenants)}t/{turns}turn {scenario.endpoint} "
                f"{scenario.schedule.interleaving}x{scenario.schedule.concurrency} {scenario.sampling.mode} "
                f"adapters {adapters} ({scenario.description.removeprefix('explore: ')})")
        note = stats.violations[0] if stats.violations else stats.error or ""
        extra = f"  {note[:100]}" if note else ""
        console.print(f"[{counter[0]:>4}] {phase:7} [{style.get(v, 'dim')}]{v.upper():7}[/] "
                      f"{stats.seconds:5.1f}s req {stats.requests:3} hits {stats.cross_user_hits:2}  {what}{extra}",
                      highlight=False, soft_wrap=True)

    return show


@command("explore", _configure_explore)
def explore_cmd(args: argparse.Namespace) -> int:
    """Search generated scenarios with hypothesis for an isolation violation; shrink and save it (exit 1 if found)."""
    console = Console(stderr=True, soft_wrap=True)
    try:
        from harness.frontends.explore import ExploreConfig, explore, target_url
        from harness.scenario.strategies import scenarios
    except ImportError as exc:  # hypothesis is a test extra
        console.print(f"error: `harness explore` needs hypothesis ({exc}); pip install 'harness[test]'")
        return 2
    import secrets

    from harness.faults import REGISTRY as CATALOG
    from harness.known import load_known_findings
    from harness.stacks.process import LaunchError

    if args.fault and args.fault not in CATALOG:
        console.print(f"error: unknown fault {args.fault!r}; known: {sorted(CATALOG)}")
        return 2
    try:
        known = tuple(load_known_findings(args.known_findings)) if args.known_findings else ()
    except ValueError as exc:
        console.print(f"error: {exc}")
        return 2
    if args.adversary_budget is not None and (not args.adversary or args.adversary_budget < 1):
        console.print("error: --adversary-budget needs --adversary and a request count of at least 1")
        return 2
    seed = args.seed if args.seed is not None else secrets.randbelow(2**32)
    budget = f"{args.time:g} s" if args.time else f"{args.examples or 20} examples"
    console.print(f"explore: seed {seed} (repeat with --seed {seed}), {budget}"
                  + (f", fault {args.fault}" if args.fault else "")
                  + (f", adversary ({args.adversary_budget or DEFAULT_BUDGET} hostile requests per example)"
                     if args.adversary else ""), highlight=False)
    try:
        with target_url(args.target, console) as url:
            cfg = ExploreConfig(target=url, examples=None if args.time else (args.examples or 20),
                                time_s=args.time, seed=seed, report_dir=args.report_dir, found_dir=args.found_dir,
                                fault=args.fault, max_shrink_runs=args.shrink_runs,
                                max_reduce_runs=args.reduce_runs, confirm=args.confirm, timeout_s=args.timeout,
                                solo=not args.no_solo, counterfactual=not args.no_counterfactual,
                                strategy=scenarios(adapters=(None,)) if args.no_adapters else None,
                                known_findings=known, adversary=args.adversary,
                                adversary_budget=args.adversary_budget)
            result = explore(cfg, on_example=_print_example(console, [0]))
    except LaunchError as exc:
        console.print(f"error: {exc}")
        return 2
    s = result.summary()
    console.print(f"examples run: {s['examples']} ({s['generated']} generated, {s['shrink_runs']} while shrinking, "
                  f"{s['reduce_runs']} reducing, {s['confirm_runs']} confirming/verifying, "
                  f"{s['searches']} search(es))   seconds: {s['seconds']}   requests: {s['requests']}   "
                  f"cross-user cache hits: {s['cross_user_hits']}   drift: {s['drift']}", highlight=False)
    console.print(f"verdicts: {dict(result.verdicts)}   failures: {len(result.found)}   "
                  f"checks left UNKNOWN (runs): {dict(result.unknown_checks)}", highlight=False)
    for d in result.unconfirmed:
        console.print(f"[yellow]a FAIL that did not fail again on a confirming run (flaky):[/] {d}")
    if result.aborted:
        console.print(f"[bold yellow]stopped early:[/] {result.aborted}")
    for f in result.found:
        state = "[red]FAIL (reproduced)[/]" if f.reproduced else "[yellow]found but did not reproduce[/]"
        console.print(f"{state} minimal scenario: {f.path} ({len(f.scenario.users)} user(s), "
                      f"{max(u.turns for u in f.scenario.users)} turn(s))")
        for v in f.violations[:3]:
            console.print(f"  violation {v}", highlight=False)
        console.print(f"  reproducer: {f.report_dir}/reproducers   replay: kvbleed replay {f.path}")
    if not result.found:
        console.print("[green]no violation found[/]" if result.exit_code == 0 else
                      "[yellow]no violation found, but not every example PASSed (UNKNOWN)[/]")
    console.print(f"summary: {args.report_dir / 'explore.json'}")
    return result.exit_code


def _configure_replay(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", type=Path, help="a saved scenario (e.g. scenarios/found/HASH.yaml)")
    p.add_argument("--target", default=None, help="base URL (default: start the embedded vLLM server)")
    p.add_argument("--report-dir", type=Path, default=Path("reports/replay"), help="where the run's reports go")
    p.add_argument("--fault", default=None, help="replay through the fault proxy with this fault")


@command("replay", _configure_replay)
def replay_cmd(args: argparse.Namespace) -> int:
    """Run a saved counterexample again: FIXED (PASS, exit 0), still FAILING (FAIL, exit 1), UNKNOWN (exit 2)."""
    from harness.frontends.explore import replay, target_url
    from harness.stacks.process import LaunchError
    from harness.verdict import Verdict

    console = Console(stderr=True)
    if not args.file.is_file():
        console.print(f"error: {args.file}: no such file")
        return 2
    try:
        with target_url(args.target, console) as url:
            outcome = replay(args.file, url, args.report_dir, fault=args.fault, console=console)
    except LaunchError as exc:
        console.print(f"error: {exc}")
        return 2
    words = {Verdict.PASS: "[bold green]FIXED[/] (PASS)", Verdict.FAIL: "[bold red]still FAILING[/] (FAIL)",
             Verdict.UNKNOWN: "[bold yellow]UNKNOWN[/]" + (f": {outcome.error}" if outcome.error else "")}
    console.print(f"{args.file}: {words[outcome.verdict]}")
    return outcome.exit_code
