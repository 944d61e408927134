"""The faults the proxy can inject, one module each (`harness.faults.base.Fault`), registered
here by importing them: adding a fault is one new module plus one line below. The import order
is the registry's, and so the order in which the selftest runs and lists the faults (import
sorting is off for that block)."""

# isort: off
from harness.faults import swap  # noqa: F401
from harness.faults import bleed  # noqa: F401
from harness.faults import inject_context  # noqa: F401
from harness.faults import stale  # noqa: F401
from harness.faults import flip  # noqa: F401
from harness.faults import salt_drop  # noqa: F401
from harness.faults import salt_merge  # noqa: F401
from harness.faults import phantom_hit  # noqa: F401
from harness.faults import noise  # noqa: F401
from harness.faults import drift  # noqa: F401
from harness.faults import delay  # noqa: F401
from harness.faults import reorder  # noqa: F401
from harness.faults import hostile_5xx  # noqa: F401
from harness.faults import crash_combo  # noqa: F401
from harness.faults import hide_hits  # noqa: F401
from harness.faults import flaky  # noqa: F401
from harness.faults import poison  # noqa: F401
from harness.faults import victim_5xx  # noqa: F401
from harness.faults import victim_hang  # noqa: F401
# isort: on
from harness.faults.base import REGISTRY, Fault, all_faults, get, register

__all__ = ["REGISTRY", "Fault", "all_faults", "get", "register"]
