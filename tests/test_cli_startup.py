"""The command line's habits: start-up imports neither scipy nor matplotlib (only the subcommand
being run is imported), --version, -v/-q, the environment variables listed in --help, and a
subcommand table that matches the registry."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from harness import __version__
from harness.frontends.cli import _COMMANDS, SUBCOMMANDS, build_parser, log_level, main

_PROBE = """
import sys
from harness.frontends.cli import build_parser
{call}
print(__import__("json").dumps(sorted(m for m in ("scipy", "matplotlib") if m in sys.modules)))
"""


@pytest.mark.parametrize("call", [
    "build_parser(None, lazy=True)",  # kvbleed --help / --version
    "build_parser('probe', lazy=True)",
    "build_parser('serve', lazy=True)",
])
def test_start_up_imports_neither_scipy_nor_matplotlib(call: str) -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE.format(call=call)], capture_output=True, text=True,
                         check=True, timeout=120)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"kvbleed {__version__}"
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for var in ("HARNESS_TARGET", "HARNESS_API_KEY", "OPENAI_API_KEY", "HARNESS_POLICY", "HARNESS_REPORT_DIR"):
        assert var in text
    for name in SUBCOMMANDS:
        assert name in text


def test_verbosity_maps_to_logging_levels() -> None:
    import logging

    assert log_level(0, 0) == logging.WARNING
    assert log_level(1, 0) == logging.INFO and log_level(2, 0) == logging.DEBUG and log_level(5, 0) == logging.DEBUG
    assert log_level(0, 1) == logging.ERROR and log_level(0, 3) == logging.ERROR


def test_subcommand_table_matches_the_registry() -> None:
    build_parser()  # registers every subcommand
    assert set(SUBCOMMANDS) == set(_COMMANDS)
    for name, (module, line) in SUBCOMMANDS.items():
        _, fn = _COMMANDS[name]
        assert fn.__module__ == f"harness.frontends.commands.{module}"
        assert (fn.__doc__ or "").strip().splitlines()[0] == line
