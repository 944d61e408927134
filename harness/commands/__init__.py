"""Subcommands of the `harness` CLI; importing this package registers them all."""

from harness.commands import serve  # noqa: F401
