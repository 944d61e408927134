"""`harness run`: drive the scenario library against a target and report PASS / FAIL / UNKNOWN."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.checks.compare import DEFAULT_TOLERANCE
from harness.cli import command
from harness.pipeline import RunConfig, run_isolation


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default=None, help="base URL of an OpenAI-compatible server "
                   "(default: start the embedded vLLM server)")
    p.add_argument("--scenario", action="append", type=Path, default=None, metavar="FILE_OR_DIR",
                   help="scenario file or folder (repeatable; default: scenarios/)")
    p.add_argument("--report-dir", type=Path, default=Path("reports/latest"), help="where reports go")
    p.add_argument("--seed", type=int, default=None, help="override every scenario's content seed")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help=f"near-tie margin in nats below which a divergence counts as drift (default {DEFAULT_TOLERANCE})")
    p.add_argument("--policy", choices=("shared-prefix", "salted"), default="shared-prefix",
                   help="shared-prefix: tenants may share cache, outputs must equal the oracle's; salted: each "
                   "tenant sends its own cache salt and no cross-tenant reuse may be observable")
    p.add_argument("--timeout", type=float, default=60.0, help="per-request timeout in seconds")
    p.add_argument("--known-findings", type=Path, default=None, metavar="FILE",
                   help="YAML baseline of acknowledged server bugs: matching violations are reported apart "
                   "and do not FAIL the run (see known-findings.yaml)")
    p.add_argument("--no-solo", action="store_true", help="skip the solo (cache transparency) replay")
    p.add_argument("--no-counterfactual", action="store_true", help="skip the counterfactual re-runs")


@command("run", _configure)
def run(args: argparse.Namespace) -> int:
    """Run isolation scenarios against a target; exit 0 PASS, 1 FAIL, 2 UNKNOWN or error."""
    cfg = RunConfig(target=args.target, scenario_paths=args.scenario or [Path("scenarios")],
                    report_dir=args.report_dir, seed=args.seed, policy=args.policy, tolerance=args.tolerance, timeout_s=args.timeout,
                    counterfactual=not args.no_counterfactual, known_findings=args.known_findings, solo=not args.no_solo)
    return run_isolation(cfg).exit_code
