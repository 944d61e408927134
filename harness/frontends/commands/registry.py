"""Importing this module registers every subcommand. The import order is the registry's, and so
the order of a full parser (import sorting is off for that block). `harness.frontends.cli` imports
only the module of the subcommand being run (its SUBCOMMANDS table; a new subcommand goes in both)."""

# isort: off
from harness.frontends.commands import serve  # noqa: F401
from harness.frontends.commands import probe  # noqa: F401
from harness.frontends.commands import run  # noqa: F401
from harness.frontends.commands import proxy  # noqa: F401
from harness.frontends.commands import selftest  # noqa: F401
from harness.frontends.commands import audit_timing  # noqa: F401
from harness.frontends.commands import report  # noqa: F401
from harness.frontends.commands import explore  # noqa: F401
from harness.frontends.commands import mutants  # noqa: F401
# isort: on
