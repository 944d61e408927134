"""`harness audit-timing`: can one tenant tell, by time to first token, what another asked?

Runs the timing side-channel audit of `harness.audit.timing` against a target (default: the
embedded server, started for the run), prints each sequential look and the verdict, and writes
`audit.json` (every sample, p-value and decision) and `audit-timing.png` (the latency
distributions) into the report folder. Exit codes 0 PASS / 1 FAIL / 2 UNKNOWN or error.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from contextlib import ExitStack
from pathlib import Path

import httpx
from rich.console import Console

from harness.audit.stats import ARMS, Look, SequentialPlan, fewest_probes
from harness.audit.timing import POLICIES, AuditConfig, AuditResult, audit, describe
from harness.frontends.cli import command
from harness.stacks import make_stack, stack_names
from harness.stacks.process import LaunchError
from harness.verdict import Verdict

_COLOURS = {"probe": "tab:red", "control": "tab:green", "miss": "tab:blue", "miss2": "tab:gray"}
_LABELS = {"probe": "probe (victim's prompt)", "control": "control (own prompt, hit)",
           "miss": "miss (fresh prompt)", "miss2": "miss2 (fresh, A/A)"}


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default=None, help="base URL (default: start the embedded vLLM server)")
    p.add_argument("--stack", choices=stack_names(), default="vllm",
                   help="without --target: the stack to launch, e.g. vllm-fleet (replicas behind vllm-router: the "
                   "audit runs through the router; $HARNESS_FLEET_REPLICAS, $HARNESS_FLEET_POLICY)")
    p.add_argument("--policy", choices=POLICIES, default="salted",
                   help="salted: each tenant its own cache salt (a leak is a FAIL); shared-prefix: no salts "
                        "(the measurement is a finding)")
    p.add_argument("--probes", type=int, default=30, help="the most probes per arm (default 30)")
    p.add_argument("--min-probes", type=int, default=5, help="probes per arm before the first look (default 5)")
    p.add_argument("--alpha", type=float, default=1e-6, help="family-wise error over the whole run (default 1e-6)")
    p.add_argument("--prompt-words", type=int, default=1500,
                   help="pool words per prompt (default 1500: one token each on the embedded model)")
    p.add_argument("--model", default=None, help="model name (default: the target's base model)")
    p.add_argument("--seed", type=int, default=None, help="seed of the words and arm order (nonces stay fresh)")
    p.add_argument("--report-dir", type=Path, default=Path("reports/audit-timing"))


def plot(result: AuditResult, path: Path) -> None:
    """Strip-and-box plot and ECDF of the four arms' times to first token, in ms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    arms = {a: [v * 1000 for v in vs] for a, vs in result.arms().items()}
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    data = [arms[a] for a in ARMS]
    if all(data):
        left.boxplot(data, orientation="horizontal", widths=0.5, showfliers=False)
    for i, a in enumerate(ARMS, start=1):
        vs = arms[a]
        jitter = [i + 0.18 * ((k * 0.618) % 1 - 0.5) for k in range(len(vs))]
        left.scatter(vs, jitter, s=14, color=_COLOURS[a], alpha=0.8, zorder=3)
        if vs:
            xs = sorted(vs)
            ys = [(k + 1) / len(xs) for k in range(len(xs))]
            right.step(xs, ys, where="post", color=_COLOURS[a], label=f"{_LABELS[a]} (n={len(xs)})")
    left.set_yticks(range(1, len(ARMS) + 1), [_LABELS[a] for a in ARMS])
    for ax in (left, right):
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("time to first token (ms, log scale)")
    right.set_ylabel("share of requests at or below")
    right.legend(loc="upper left", fontsize=8)
    final = result.final
    sub = ""
    if final is not None:
        sub = (f"; Holm p probe<miss {final.probe.min_p_holm:.2g}, control<miss {final.control.min_p_holm:.2g}, "
               f"A/A {final.aa.min_p_holm:.2g}")
    fig.suptitle(f"audit-timing ({result.config.policy}): {result.verdict.value.upper()}, "
                 f"{result.probes_per_arm} probes per arm{sub}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(result: AuditResult, report_dir: Path) -> tuple[Path, Path | None]:
    """audit.json and audit-timing.png in `report_dir` (no PNG, None, where matplotlib, the `plot`
    extra, is not installed: the report stands without it)."""
    report_dir.mkdir(parents=True, exist_ok=True)
    json_path = report_dir / "audit.json"
    json_path.write_text(json.dumps(result.to_dict(), indent=2))
    png_path = report_dir / "audit-timing.png"
    png_path.unlink(missing_ok=True)
    if importlib.util.find_spec("matplotlib") is None:
        return json_path, None
    plot(result, png_path)
    return json_path, png_path


@command("audit-timing", _configure)
def audit_timing(args: argparse.Namespace) -> int:
    """Timing side-channel audit: can an attacker tenant tell, by time to first token, another tenant's prompt?"""
    console = Console(stderr=True)
    try:
        plan = SequentialPlan(alpha=args.alpha, min_probes=args.min_probes, max_probes=args.probes)
    except ValueError as exc:
        console.print(f"error: {exc}")
        return 2
    need = fewest_probes(plan)
    if need is None:
        console.print(f"[yellow]warning: at alpha {plan.alpha:g} even a perfectly separated arm cannot be "
                      f"detected within {plan.max_probes} probes per arm[/]")
    with ExitStack() as stack:
        target = args.target
        if target is None:
            try:
                server = make_stack(None, args.stack)
                console.print(f"starting the {server.NAME} ...")
                stack.callback(server.stop)
                target = server.start()
            except LaunchError as exc:
                console.print(f"error: {exc}")
                return 2
        try:
            config = AuditConfig(target=target, policy=args.policy, plan=plan, prompt_words=args.prompt_words,
                                 model=args.model, seed=args.seed)
        except ValueError as exc:
            console.print(f"error: {exc}")
            return 2
        console.print(f"audit-timing against {target}: policy {config.policy}, alpha {plan.alpha:g} "
                      f"({plan.alpha_per_look:.3g} per look), {plan.min_probes}-{plan.max_probes} probes per arm "
                      f"(at least {need or '-'} needed even for perfect separation)")

        def on_look(lk: Look) -> None:
            console.print(f"  n={lk.n:>2}: Holm p probe<miss {lk.probe.min_p_holm:.3g}, "
                          f"control<miss {lk.control.min_p_holm:.3g}, A/A {lk.aa.min_p_holm:.3g} "
                          f"-> {lk.decision.value}")

        try:
            result = audit(config, on_look)
        except (httpx.HTTPError, OSError) as exc:
            console.print(f"error: cannot audit {target}: {type(exc).__name__}: {exc}")
            return 2
    json_path, png_path = write_report(result, args.report_dir)
    console.print(f"seed {result.seed}; model {result.model}; {result.probes_per_arm} probes per arm; "
                  f"{result.duration_s:.1f} s")
    if result.final is not None:
        console.print(describe(result.final))
    for c in result.checks:
        colour = {Verdict.PASS: "green", Verdict.FAIL: "red", Verdict.UNKNOWN: "yellow"}[c.verdict]
        console.print(f"[{colour}]{c.verdict.value.upper()}[/] {c.name}")
        for v in c.violations:
            console.print(f"    violation: {v.message}")
        for n in c.notes:
            if not n.startswith(("probe<", "control<", "miss2~")):  # describe() printed those
                console.print(f"    {n}")
    for n in result.notes:
        console.print(f"  note: {n}")
    verdict = result.verdict
    colour = {Verdict.PASS: "green", Verdict.FAIL: "red", Verdict.UNKNOWN: "yellow"}[verdict]
    drawn = png_path or "not drawn (matplotlib is not installed: the `plot` extra)"
    console.print(f"[bold {colour}]{verdict.value.upper()}[/]  report: {json_path}  plot: {drawn}")
    return verdict.exit_code
