"""A fleet's two settings, how many replicas and which router policy, checked in one place for
every way they arrive: `--replicas` / `--router-policy`, the configuration file's `replicas` /
`router-policy`, and the environment (`HARNESS_FLEET_REPLICAS`, `HARNESS_FLEET_POLICY`), which
`stacks.fleet.FleetStack` reads when neither of the others gave a value.

Kept apart from `stacks.fleet` so that parsing the command line and the configuration file does
not import the process machinery.
"""

from __future__ import annotations

POLICIES = ("cache_aware", "kv_aware", "round_robin", "random", "power_of_two", "consistent_hash",
            "sticky_least_loaded")
"""The router's `--policy` choices (vllm-router 0.1.17)."""
DEFAULT_POLICY = "cache_aware"
DEFAULT_REPLICAS = 2
MAX_REPLICAS = 16
"""More embedded replicas than this is a typo, not a fleet this machine can hold."""
REPLICAS_ENV = "HARNESS_FLEET_REPLICAS"
POLICY_ENV = "HARNESS_FLEET_POLICY"


def parse_replicas(value: object) -> int:
    """A replica count from an int or a decimal string, 1..MAX_REPLICAS; ValueError saying what
    was expected otherwise."""
    expected = f"expected a whole number of replicas from 1 to {MAX_REPLICAS}"
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(expected)
    try:
        n = int(value)
    except ValueError:
        raise ValueError(expected) from None
    if not 1 <= n <= MAX_REPLICAS:
        raise ValueError(expected)
    return n


def parse_policy(value: object) -> str:
    """A router policy name; ValueError listing the choices otherwise."""
    if value not in POLICIES:
        raise ValueError(f"expected a router policy, one of {', '.join(POLICIES)}")
    return str(value)


__all__ = ["DEFAULT_POLICY", "DEFAULT_REPLICAS", "MAX_REPLICAS", "POLICIES", "POLICY_ENV", "REPLICAS_ENV",
           "parse_policy", "parse_replicas"]
