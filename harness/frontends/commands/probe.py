"""`harness probe`: verify what a target can do (salts, cached counts, metrics, reset, adapters...).

Without --target (or HARNESS_TARGET) it starts the embedded server for the duration of the probe.
It prints a table of capability / available / evidence; `--json` prints the capabilities as JSON
alone on stdout instead, `--json FILE` writes them there. An unreachable or non-OpenAI target is a
one-line error on stderr and exit code 2. The cache-reset step runs against a target the harness
did not launch only with --allow-disruptive.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from harness.client import TargetClient
from harness.client.connection import Connection, CredentialError, using
from harness.frontends.cli import command
from harness.frontends.config import ConfigError, load_config
from harness.frontends.target_args import add_target_args, connection_from
from harness.probe.capabilities import Capabilities, ProbeError, probe
from harness.stacks import Stack, make_stack
from harness.stacks.process import LaunchError

_MARK = {True: "[green]yes[/green]", False: "[red]no[/red]", None: "[yellow]unknown[/yellow]"}


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default=None,
                   help="base URL of an OpenAI-compatible server "
                   "(default: $HARNESS_TARGET, else start the embedded one)")
    p.add_argument("--json", nargs="?", const="-", default=None, dest="json_path", metavar="FILE",
                   help="print the capabilities as JSON alone on stdout (no table), or write them to FILE")
    p.add_argument("--timeout", type=float, default=60.0, help="per-request timeout in seconds (default 60)")
    p.add_argument("--config", type=Path, default=None, metavar="FILE",
                   help="configuration file for the credential and TLS settings (as `run`'s)")
    add_target_args(p)


def render_table(caps: Capabilities) -> Table:
    """The capability / available / evidence table for the console."""
    table = Table(title=f"Capabilities of {caps.target}")
    table.add_column("capability")
    table.add_column("available")
    table.add_column("evidence", overflow="fold")
    for name, cap in caps.rows():
        table.add_row(name, _MARK[cap.available], cap.evidence)
    return table


async def _probe_url(url: str, timeout_s: float, conn: Connection) -> Capabilities:
    async with TargetClient(url, timeout_s=timeout_s, connection=conn) as client:
        try:
            await client.get_json("/v1/models")
        except httpx.HTTPStatusError as exc:
            code = exc.response.status_code
            if code in (401, 403):
                key = f"the key from {conn.api_key_env}" if conn.api_key_env else (
                    "the key given with --api-key" if conn.api_key else "no API key: --api-key or HARNESS_API_KEY")
                raise ProbeError(f"{url} refused the credentials: GET /v1/models -> HTTP {code} "
                                 f"{exc.response.reason_phrase} ({key})") from None
        except (httpx.HTTPError, ValueError):
            pass  # not reachable, or not JSON: the probe itself names what is wrong
        # The reset step disturbs every user of the server: only with --allow-disruptive (or on
        # the embedded server the probe launched itself).
        return await probe(client, allow_reset=conn.allow_disruptive)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


@command("probe", _configure)
def probe_command(args: argparse.Namespace) -> int:
    """Probe a target's capabilities with real requests and print what was verified."""
    server: Stack | None = None
    try:
        conn = connection_from(args, load_config(args.config).values)
        url = args.target or os.environ.get("HARNESS_TARGET") or None
        if url is None:
            print("starting the embedded vLLM server for the probe ...", file=sys.stderr, flush=True)
            server = make_stack(None, "vllm")
            url = server.start()
            conn = dataclasses.replace(conn, allow_disruptive=True)
        with using(conn):
            caps = asyncio.run(_probe_url(url, args.timeout, conn))
    except (ConfigError, CredentialError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ProbeError, LaunchError) as exc:
        # LaunchError quotes a log tail; the console gets its first line, the log path is in it.
        print(f"error: {_one_line(str(exc).splitlines()[0]) if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 2
    finally:
        if server is not None:
            server.stop()
    text = json.dumps(caps.to_json(), indent=2)
    if args.json_path == "-":
        print(text)
        return 0
    Console().print(render_table(caps))
    if args.json_path is not None:
        path = Path(args.json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
        print(f"wrote {path}", file=sys.stderr)
    return 0
