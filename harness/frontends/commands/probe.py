"""`harness probe`: verify what a target can do (salts, cached counts, metrics, reset, adapters...).

Without --target it starts the embedded server for the duration of the probe. It prints a table
of capability / available / evidence and the capabilities as JSON (to stdout, or to --json).
An unreachable or non-OpenAI target is a one-line error on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from harness.client import TargetClient
from harness.frontends.cli import command
from harness.probe.capabilities import Capabilities, ProbeError, probe
from harness.stacks import Stack, make_stack
from harness.stacks.process import LaunchError

_MARK = {True: "[green]yes[/green]", False: "[red]no[/red]", None: "[yellow]unknown[/yellow]"}


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default=None,
                   help="base URL of an OpenAI-compatible server (default: start the embedded one)")
    p.add_argument("--json", type=Path, default=None, dest="json_path",
                   help="write the capabilities JSON here instead of stdout")
    p.add_argument("--timeout", type=float, default=60.0, help="per-request timeout in seconds (default 60)")


def render_table(caps: Capabilities) -> Table:
    """The capability / available / evidence table for the console."""
    table = Table(title=f"Capabilities of {caps.target}")
    table.add_column("capability")
    table.add_column("available")
    table.add_column("evidence", overflow="fold")
    for name, cap in caps.rows():
        table.add_row(name, _MARK[cap.available], cap.evidence)
    return table


async def _probe_url(url: str, timeout_s: float) -> Capabilities:
    async with TargetClient(url, timeout_s=timeout_s) as client:
        return await probe(client)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


@command("probe", _configure)
def probe_command(args: argparse.Namespace) -> int:
    """Probe a target's capabilities with real requests and print what was verified."""
    server: Stack | None = None
    try:
        url = args.target
        if url is None:
            print("starting the embedded vLLM server for the probe ...", file=sys.stderr, flush=True)
            server = make_stack(None, "vllm")
            url = server.start()
        caps = asyncio.run(_probe_url(url, args.timeout))
    except (ProbeError, LaunchError) as exc:
        # LaunchError quotes a log tail; the console gets its first line, the log path is in it.
        print(f"error: {_one_line(str(exc).splitlines()[0]) if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 2
    finally:
        if server is not None:
            server.stop()
    Console().print(render_table(caps))
    text = json.dumps(caps.to_json(), indent=2)
    if args.json_path is not None:
        args.json_path.parent.mkdir(parents=True, exist_ok=True)
        args.json_path.write_text(text + "\n")
        print(f"wrote {args.json_path}")
    else:
        print(text)
    return 0
