"""`harness run`: drive the scenario library against a target and report PASS / FAIL / UNKNOWN.

Settings come from the flags, then a configuration file (`--config FILE`, else `isolation.toml`,
else `[tool.harness]` in `pyproject.toml`, see `harness.frontends.config`), then the defaults below.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from harness.checks.compare import DEFAULT_TOLERANCE
from harness.frontends.cli import command
from harness.frontends.config import RUN_DEFAULTS, ConfigError, load_config, merge
from harness.frontends.runs import RunConfig, run_isolation
from harness.stacks import STACKS


def _configure(p: argparse.ArgumentParser) -> None:
    # Every default is None here so that a flag left out can be taken from the configuration file;
    # the real defaults (RUN_DEFAULTS, stated in each help text) are applied after the merge.
    p.add_argument("--config", type=Path, default=None, metavar="FILE",
                   help="configuration file (TOML; keys mirror these flags; a pyproject.toml is read from "
                   "its [tool.harness] table; default: ./isolation.toml, else [tool.harness] in "
                   "./pyproject.toml, if present). Flags override the file")
    p.add_argument("--target", default=None, help="base URL of an OpenAI-compatible server "
                   "(default: start the embedded vLLM server)")
    p.add_argument("--stack", choices=STACKS, default=None,
                   help="without --target: the server to launch, vllm (default) or llama-cpp (needs `make llama-cpp`)")
    p.add_argument("--scenario", action="append", type=Path, default=None, metavar="FILE_OR_DIR",
                   help="scenario file or folder (repeatable; default: scenarios/)")
    p.add_argument("--report-dir", type=Path, default=None, help="where reports go (default: reports/latest)")
    p.add_argument("--seed", type=int, default=None, help="override every scenario's content seed")
    p.add_argument("--tolerance", type=float, default=None,
                   help="near-tie margin in nats below which a divergence counts as drift "
                   f"(default {DEFAULT_TOLERANCE})")
    p.add_argument("--policy", choices=("shared-prefix", "salted"), default=None,
                   help="shared-prefix: tenants may share cache, outputs must equal the oracle's; salted: each "
                   "tenant sends its own cache salt and no cross-tenant reuse may be observable "
                   "(default: shared-prefix)")
    p.add_argument("--timeout", type=float, default=None, help="per-request timeout in seconds (default: 60)")
    p.add_argument("--known-findings", type=Path, default=None, metavar="FILE",
                   help="YAML baseline of acknowledged server bugs: matching violations are reported apart "
                   "and do not FAIL the run (see known-findings.yaml)")
    p.add_argument("--no-solo", action="store_true", default=None, help="skip the solo (cache transparency) replay")
    p.add_argument("--no-counterfactual", action="store_true", default=None,
                   help="skip the counterfactual re-runs")


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """The run's settings: flags over the configuration file over RUN_DEFAULTS (raises ConfigError)."""
    file = load_config(getattr(args, "config", None))
    if file.source is not None:
        print(f"config: {file.source}", file=sys.stderr)
    return merge({k: getattr(args, k, None) for k in RUN_DEFAULTS}, file)


@command("run", _configure)
def run(args: argparse.Namespace) -> int:
    """Run isolation scenarios against a target; exit 0 PASS, 1 FAIL, 2 UNKNOWN or error."""
    try:
        s = settings(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cfg = RunConfig(target=s["target"], scenario_paths=s["scenario"], report_dir=s["report_dir"], seed=s["seed"],
                    policy=s["policy"], tolerance=s["tolerance"], timeout_s=s["timeout"],
                    counterfactual=not s["no_counterfactual"], known_findings=s["known_findings"],
                    solo=not s["no_solo"], stack=s["stack"])
    return run_isolation(cfg).exit_code
