"""`harness run`: drive the scenario library against a target and report PASS / FAIL / UNKNOWN.

Settings come from the flags, then the environment (HARNESS_TARGET, HARNESS_POLICY,
HARNESS_REPORT_DIR, HARNESS_API_KEY), then a configuration file (`--config FILE`, else `isolation.toml`,
else `[tool.harness]` in `pyproject.toml`, see `harness.frontends.config`), then the defaults below.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from harness.adversary.cases import DEFAULT_BUDGET
from harness.checks.compare import DEFAULT_TOLERANCE
from harness.client.connection import CredentialError
from harness.frontends.cli import command
from harness.frontends.config import RUN_DEFAULTS, ConfigError, FileConfig, load_config, merge
from harness.frontends.fleet_args import FLEET_STACK, FleetArgsError, add_fleet_args, fleet_options
from harness.frontends.runs import RunConfig, run_files, run_isolation
from harness.frontends.target_args import add_target_args, connection_from
from harness.nemesis import NEMESES, NemesisError, parse_nemeses
from harness.nemesis.server import check_target, embedded_options
from harness.stacks import STACKS, make_stack


def _configure(p: argparse.ArgumentParser) -> None:
    # Every default is None here so that a flag left out can be taken from the configuration file;
    # the real defaults (RUN_DEFAULTS, stated in each help text) are applied after the merge.
    p.add_argument("--config", type=Path, default=None, metavar="FILE",
                   help="configuration file (TOML; keys mirror these flags; a pyproject.toml is read from "
                   "its [tool.harness] table; default: ./isolation.toml, else [tool.harness] in "
                   "./pyproject.toml, if present). Flags override the file")
    p.add_argument("--target", default=None, help="base URL of an OpenAI-compatible server "
                   "(default: $HARNESS_TARGET, else start the embedded vLLM server)")
    p.add_argument("--model", default=None, metavar="NAME",
                   help="the base model under test (default: the first model the target lists that is not an "
                   "adapter); tenants' adapters are resolved among its adapters")
    p.add_argument("--gateway-salts", action="store_true", default=None,
                   help="a gateway in front of the target sets each tenant's cache salt from its key: cache "
                   "domains are taken from tenant identities (give each tenant its key: tenants.NAME.api_key_env)")
    p.add_argument("--stack", choices=STACKS, default=None,
                   help="without --target: the server to launch, vllm (default), llama-cpp (needs `make llama-cpp`) "
                   "or vllm-fleet (embedded vLLM replicas behind vllm-router; README, \"A fleet under test\")")
    add_fleet_args(p)
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
    p.add_argument("--replay-incidents", action="store_true", default=None,
                   help="with --target: when the server dies, drops connections, times out or answers 5xx, replay "
                   "the requests that were in flight (once it answers again) and bisect them to the smallest group "
                   "that does it; without it such an incident is UNKNOWN (a server the harness launched is always "
                   "restarted and replayed)")
    p.add_argument("--adversary-budget", type=_budget, default=None, metavar="N",
                   help="hostile requests the adversarial tenant sends per adversarial scenario (a request count, "
                   f"so a run is the same on every machine; default: {DEFAULT_BUDGET}, about three minutes with the "
                   "embedded server on 2 cores); a larger budget goes deeper into the schema's values and pairs")
    p.add_argument("--nemesis", default=None, metavar="NAME[,NAME]",
                   help="disturb the server while clients run: " + "; ".join(f"{n}: {d}" for n, d in NEMESES.items())
                   + " (README, \"Nemeses\")")
    add_target_args(p)


def _budget(text: str) -> int:
    """A request-count budget: a whole number of at least 1."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of requests, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1 request, got {n}")
    return n


def settings(args: argparse.Namespace, file: FileConfig | None = None) -> dict[str, Any]:
    """The run's settings: flags over the environment over the configuration file over
    RUN_DEFAULTS (raises ConfigError)."""
    if file is None:
        file = load_config(getattr(args, "config", None))
        if file.source is not None:
            print(f"config: {file.source}", file=sys.stderr)
    return merge({k: getattr(args, k, None) for k in RUN_DEFAULTS}, file)


@command("run", _configure)
def run(args: argparse.Namespace) -> int:
    """Run isolation scenarios against a target; exit 0 PASS, 1 FAIL, 2 UNKNOWN or error."""
    try:
        file = load_config(getattr(args, "config", None))
        if file.source is not None:
            print(f"config: {file.source}", file=sys.stderr)
        s = settings(args, file)
        conn = connection_from(args, file.values)
    except (ConfigError, CredentialError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cfg = RunConfig(target=s["target"], scenario_paths=s["scenario"], report_dir=s["report_dir"], seed=s["seed"],
                    policy=s["policy"], tolerance=s["tolerance"], timeout_s=s["timeout"],
                    counterfactual=not s["no_counterfactual"], known_findings=s["known_findings"],
                    solo=not s["no_solo"], stack=s["stack"], connection=conn, model=s["model"],
                    gateway_salts=bool(s["gateway_salts"]), allow_disruptive=conn.allow_disruptive,
                    replay_incidents=bool(s["replay_incidents"]))
    try:
        names = parse_nemeses(s["nemesis"])
        check_target(names, cfg.target, cfg.stack)
        fleet = fleet_options(cfg.stack, s["replicas"], s["router_policy"], cfg.target)
    except (NemesisError, FleetArgsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    budget = s["adversary_budget"]
    if not names and budget is None and (cfg.target or cfg.stack != FLEET_STACK):
        return run_isolation(cfg).exit_code
    try:  # a fleet's settings are checked here (flags, file, else its environment variables)
        stack = make_stack(cfg.target, cfg.stack,
                           **(fleet or ({} if cfg.target or cfg.stack != "vllm" else embedded_options(names))))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    opts = replace(cfg.options(), nemesis=names, adversary_budget=budget)
    return run_files(list(cfg.scenario_paths), stack, opts, Path(cfg.report_dir), cfg.known_findings).exit_code
