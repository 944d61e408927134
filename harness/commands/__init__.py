"""Subcommands of the `harness` CLI; importing this package registers them all."""

from harness.commands import serve  # noqa: F401
from harness.commands import probe  # noqa: F401
from harness.commands import run  # noqa: F401
from harness.commands import proxy  # noqa: F401
from harness.commands import selftest  # noqa: F401
from harness.commands import audit_timing  # noqa: F401
from harness.commands import report  # noqa: F401
from harness.commands import explore  # noqa: F401
