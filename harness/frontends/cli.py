"""The `harness` command line: one subcommand per job, exit codes 0 PASS / 1 FAIL / 2 UNKNOWN or error."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

Handler = Callable[[argparse.Namespace], int]
_COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Handler]] = {}


def command(name: str, configure: Callable[[argparse.ArgumentParser], None]) -> Callable[[Handler], Handler]:
    """Register a subcommand: `configure` adds its arguments, the decorated function runs it."""

    def deco(fn: Handler) -> Handler:
        _COMMANDS[name] = (configure, fn)
        return fn

    return deco


def build_parser() -> argparse.ArgumentParser:
    from harness.frontends import commands  # noqa: F401  (registers the subcommands)

    parser = argparse.ArgumentParser(
        prog="harness",
        description="Multi-tenant isolation test harness for LLM serving stacks with prefix caching.",
        epilog="Exit codes: 0 PASS, 1 FAIL (a violation, with a reproducer), 2 UNKNOWN or error.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (configure, fn) in _COMMANDS.items():
        doc = (fn.__doc__ or "").strip()
        p = sub.add_parser(name, help=doc.splitlines()[0] if doc else None, description=doc)
        configure(p)
        p.set_defaults(_handler=fn)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._handler(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
