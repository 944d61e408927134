"""Named checks; importing this package registers them (see harness.checks.base.REGISTRY)."""

from harness.checks import accounting, availability, canary, counters, exercised, isolation, requests  # noqa: F401
