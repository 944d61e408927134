"""Subcommands of the `harness` CLI; importing this package registers them all. The import order
is the registry's, and so the order in which `harness --help` lists the subcommands (import
sorting is off for that block)."""

# isort: off
from harness.frontends.commands import serve  # noqa: F401
from harness.frontends.commands import probe  # noqa: F401
from harness.frontends.commands import run  # noqa: F401
from harness.frontends.commands import proxy  # noqa: F401
from harness.frontends.commands import selftest  # noqa: F401
from harness.frontends.commands import audit_timing  # noqa: F401
from harness.frontends.commands import report  # noqa: F401
from harness.frontends.commands import explore  # noqa: F401
# isort: on
