"""`--replicas N` and `--router-policy P`: the fleet's flags (`--stack vllm-fleet`), one definition
for every command that launches a fleet, and the stack options they become.

Validated by argparse as they are read (a whole number from 1 to `MAX_REPLICAS`; one of the
router's policies); given with any other stack they are an error, not silently ignored. Left out,
the fleet takes `$HARNESS_FLEET_REPLICAS` / `$HARNESS_FLEET_POLICY`, else 2 replicas and
cache_aware (`harness.stacks.fleet_settings`).
"""

from __future__ import annotations

import argparse
from typing import Any

from harness.stacks.fleet_settings import (
    DEFAULT_POLICY,
    DEFAULT_REPLICAS,
    MAX_REPLICAS,
    POLICIES,
    POLICY_ENV,
    REPLICAS_ENV,
    parse_policy,
    parse_replicas,
)

FLEET_STACK = "vllm-fleet"


class FleetArgsError(ValueError):
    """Fleet settings given for a stack that is not a fleet."""


def _argparse(parse: Any) -> Any:
    """`parse` as an argparse `type`: its ValueError becomes argparse's usage error."""
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert.__name__ = parse.__name__
    return convert


def add_fleet_args(p: argparse.ArgumentParser) -> None:
    """Add `--replicas` and `--router-policy` (both default None: not given)."""
    p.add_argument("--replicas", type=_argparse(parse_replicas), default=None, metavar="N",
                   help=f"{FLEET_STACK} only: embedded vLLM replicas behind the router, 1 to {MAX_REPLICAS} "
                   f"(default: ${REPLICAS_ENV}, else {DEFAULT_REPLICAS})")
    p.add_argument("--router-policy", type=_argparse(parse_policy), default=None, metavar="POLICY",
                   help=f"{FLEET_STACK} only: vllm-router's --policy, one of {', '.join(POLICIES)} "
                   f"(default: ${POLICY_ENV}, else {DEFAULT_POLICY})")


def fleet_options(stack: str | None, replicas: int | None, router_policy: str | None,
                  target: str | None = None) -> dict[str, Any]:
    """The stack keywords for the given settings: empty when none was given; FleetArgsError when
    one was given but no fleet is launched (another stack, or an external `target`)."""
    given = {k: v for k, v in (("replicas", replicas), ("router_policy", router_policy)) if v is not None}
    if not given:
        return {}
    if target or stack != FLEET_STACK:
        where = f"a --target ({target})" if target else f"--stack {stack}"
        raise FleetArgsError(f"--replicas and --router-policy apply to --stack {FLEET_STACK} only, not to {where}")
    return given


__all__ = ["FLEET_STACK", "FleetArgsError", "add_fleet_args", "fleet_options"]
