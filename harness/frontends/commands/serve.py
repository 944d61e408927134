"""`harness serve`: run an embedded server in the foreground until Ctrl-C.

`--stack vllm` (default): vLLM with prefix caching, salts, cached-token counts, reset, adapters.
`--stack llama-cpp`: llama.cpp (llama-cpp-python's server) on the same model converted to GGUF
once; it offers none of those cache observations (see docs/llamacpp.md).
`--stack vllm-fleet [--replicas N] [--router-policy P]`: N embedded vLLM replicas behind
vllm-router (`stacks.fleet`); `--port` is the router's.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Any

from harness.frontends.cli import command
from harness.frontends.fleet_args import FLEET_STACK, FleetArgsError, add_fleet_args, fleet_options
from harness.stacks import make_stack, stack_names
from harness.stacks.fleet import FleetStack
from harness.stacks.process import LaunchError, OwnedProcess


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stack", choices=stack_names(), default="vllm",
                   help="serving stack: vllm (default), llama-cpp (needs `make llama-cpp`) or vllm-fleet (replicas "
                   "behind vllm-router; needs the `fleet` extra)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1, loopback only; 0.0.0.0 in a container)")
    p.add_argument("--model-dir", type=Path, default=None, help="model folder (default: build the embedded model)")
    p.add_argument("--log", type=Path, default=None, help="server log file (default .cache/logs/STACK-PORT.log)")
    p.add_argument("--startup-timeout", type=float, default=600.0, help="seconds to wait for health")
    p.add_argument("--gguf", type=Path, default=None,
                   help="llama-cpp only: a GGUF file (default: convert the model folder once, cached)")
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help="vllm only: require this API key on /v1 requests (vLLM's own --api-key; default: "
                   "$HARNESS_SERVE_API_KEY, else none)")
    add_fleet_args(p)  # with vllm-fleet, --port is the router's
    p.add_argument("--no-interrupt-requests", action="store_true",
                   help="llama-cpp only: turn off llama-cpp-python's default of cutting a running stream short "
                        "when another request waits (a cross-tenant finding, docs/llamacpp.md)")


@command("serve", _configure)
def serve(args: argparse.Namespace) -> int:
    """Start an embedded server: vLLM (default) or llama.cpp on the same model."""
    options: dict[str, Any] = dict(model_dir=args.model_dir, port=args.port, log_path=args.log,
                                   startup_timeout_s=args.startup_timeout, host=args.host)
    api_key = args.api_key or os.environ.get("HARNESS_SERVE_API_KEY") or None
    try:
        fleet = fleet_options(args.stack, args.replicas, args.router_policy)
    except FleetArgsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.stack == FLEET_STACK:
        if api_key or args.gguf is not None or args.no_interrupt_requests:
            print("error: --api-key, --gguf and --no-interrupt-requests do not apply to --stack vllm-fleet",
                  file=sys.stderr)
            return 2
        options.update(fleet)
    elif args.stack == "llama-cpp":
        if api_key:
            print("error: --api-key applies to --stack vllm only", file=sys.stderr)
            return 2
        options.update(gguf=args.gguf, interrupt_requests=False if args.no_interrupt_requests else None)
    elif args.gguf is not None or args.no_interrupt_requests:
        print("error: --gguf and --no-interrupt-requests apply to --stack llama-cpp only", file=sys.stderr)
        return 2
    elif api_key:
        options.update(extra_env={"VLLM_API_KEY": api_key})  # not on the command line: no other user sees it
    try:
        server = make_stack(None, args.stack, **options)
    except ValueError as exc:  # a bad $HARNESS_FLEET_REPLICAS / $HARNESS_FLEET_POLICY
        print(f"error: {exc}", file=sys.stderr)
        return 2
    assert isinstance(server, OwnedProcess | FleetStack), "serve runs the stacks the harness launches"
    name = server.NAME
    print(f"starting {name} on {args.host}:{args.port} (log: {args.log or '.cache/logs/'}) ...", flush=True)
    # SIGTERM becomes KeyboardInterrupt from the start, so a SIGTERM at any point (during start-up,
    # or on seeing "ready") stops the server's whole group instead of orphaning it.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        server.start()
        print(f"ready at {server.base_url} after {server.startup_s:.1f} s; Ctrl-C to stop", flush=True)
        server.wait()
    except LaunchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    if server.returncode not in (0, -15, None):
        print(f"server exited with code {server.returncode}", file=sys.stderr)
        return 2
    return 0
