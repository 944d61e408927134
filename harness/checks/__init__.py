"""Named checks; importing this package registers them (see harness.checks.base.REGISTRY)."""

from harness.checks import (  # noqa: F401
    accounting,
    availability,
    canary,
    counters,
    echo,
    exercised,
    isolation,
    nemesis,
    requests,
    side_channels,
)
