"""Named checks; importing this package registers them (see harness.checks.base.REGISTRY)."""

from harness.checks import accounting, canary, exercised, isolation, requests  # noqa: F401
