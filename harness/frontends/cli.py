"""The command line (`kvbleed`): one subcommand per job, exit codes 0 PASS / 1 FAIL / 2 UNKNOWN or error.

Start-up imports only argparse and the subcommands' configuration; each subcommand's heavy
dependencies (scipy, matplotlib) are imported where they are used.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

PROG = "kvbleed"
Handler = Callable[[argparse.Namespace], int]
_COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Handler]] = {}

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("serve", "Start an embedded server: vLLM (default) or llama.cpp on the same model."),
    "probe": ("probe", "Probe a target's capabilities with real requests and print what was verified."),
    "run": ("run", "Run isolation scenarios against a target; exit 0 PASS, 1 FAIL, 2 UNKNOWN or error."),
    "proxy": ("proxy", "Run a reverse proxy that injects a named isolation fault (or a benign control) into a "
              "target's traffic."),
    "selftest": ("selftest", "Run each registered fault through the proxy and show which checks detect it "
                 "(exit 0: all detected)."),
    "audit-timing": ("audit_timing", "Timing side-channel audit: can an attacker tenant tell, by time to first "
                     "token, another tenant's prompt?"),
    "report": ("report", "Re-render DIR/report.html from a saved report folder and print its path (exit 2 if DIR "
               "is not one)."),
    "explore": ("explore", "Search generated scenarios with hypothesis for an isolation violation; shrink and save "
                "it (exit 1 if found)."),
    "replay": ("explore", "Run a saved counterexample again: FIXED (PASS, exit 0), still FAILING (FAIL, exit 1), "
               "UNKNOWN (exit 2)."),
    "mutants": ("mutants", "Run mutants of the embedded vLLM's own code and show which checks kill them (exit 0: "
                "all killed)."),
}
"""subcommand -> (its module under harness.frontends.commands, one line for --help). Only the
module of the subcommand being run is imported (tests/test_cli_startup.py keeps this table equal
to `harness.frontends.commands.registry`)."""


def command(name: str, configure: Callable[[argparse.ArgumentParser], None]) -> Callable[[Handler], Handler]:
    """Register a subcommand: `configure` adds its arguments, the decorated function runs it."""

    def deco(fn: Handler) -> Handler:
        _COMMANDS[name] = (configure, fn)
        return fn

    return deco


def _epilog() -> str:
    from harness.frontends.target_args import ENVIRONMENT

    lines = ["Exit codes: 0 PASS, 1 FAIL (a violation, with a reproducer), 2 UNKNOWN or error.", "",
             "Environment variables (a flag given wins):"]
    lines += [f"  {name:24} {what}" for name, what in ENVIRONMENT.items()]
    return "\n".join(lines)


def build_parser(only: str | None = None, *, lazy: bool = False) -> argparse.ArgumentParser:
    """The full parser; `lazy`: one that imports (and configures) only subcommand `only` (none
    when None), listing the others by their line in SUBCOMMANDS (an unknown name loads them all)."""
    import importlib

    from harness import __version__

    if lazy and only in SUBCOMMANDS:
        importlib.import_module(f"harness.frontends.commands.{SUBCOMMANDS[only][0]}")
    elif not lazy or only is not None:
        from harness.frontends.commands import registry  # noqa: F401  (registers the subcommands)
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Multi-tenant isolation test harness for LLM serving stacks with prefix caching.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="less log output (errors only)")
    sub = parser.add_subparsers(dest="command", required=True)
    names = list(dict.fromkeys([*SUBCOMMANDS, *_COMMANDS]))
    for name in names:
        if name not in _COMMANDS:  # not loaded: listed only
            sub.add_parser(name, help=SUBCOMMANDS[name][1])
            continue
        configure, fn = _COMMANDS[name]
        doc = (fn.__doc__ or "").strip()
        p = sub.add_parser(name, help=doc.splitlines()[0] if doc else None, description=doc)
        configure(p)
        p.set_defaults(_handler=fn)
    return parser


def _subcommand(argv: list[str]) -> str | None:
    """The subcommand `argv` names (the first word that is not an option), or None."""
    return next((a for a in argv if not a.startswith("-")), None)


def log_level(verbose: int, quiet: int) -> int:
    """WARNING by default; -v INFO, -vv DEBUG; -q ERROR."""
    return max(logging.DEBUG, min(logging.ERROR, logging.WARNING - 10 * verbose + 10 * quiet))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    name = _subcommand(argv)
    parser = build_parser(name, lazy=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=log_level(args.verbose, args.quiet), stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args._handler(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
