"""`harness proxy`: run the fault-injecting reverse proxy in the foreground until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from harness.faults import all_faults
from harness.faults.injections import Injection
from harness.faults.proxy import DEFAULT_TIMEOUT_S, FaultProxy
from harness.frontends.cli import command


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", help="base URL of the OpenAI-compatible server to sit in front of")
    p.add_argument("--fault", default=None, help="fault to inject (see --list); omit or 'none' for a transparent proxy")
    p.add_argument("--rate", type=float, default=1.0, help="probability an eligible request gets the fault (default 1)")
    p.add_argument("--port", type=int, default=0, help="loopback port to listen on (default: a free one)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--seed", type=int, default=0, help="seed for every random choice of the faults (default 0)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                   help=f"seconds an upstream call may stay silent (default {DEFAULT_TIMEOUT_S:g})")
    p.add_argument("--quiet", action="store_true", help="do not print each injection")
    p.add_argument("--list", action="store_true", help="print the fault catalog and exit")


def _print_catalog() -> None:
    faults = all_faults()
    width = max(len(f.name) for f in faults)
    for spec in faults:
        print(f"{spec.name:<{width}}  {spec.kind:<6}  {spec.changes}")
        print(f"{'':<{width}}  {'':<6}  models: {spec.models}")
        print(f"{'':<{width}}  {'':<6}  caught by: {spec.detected_by}")


@command("proxy", _configure)
def proxy(args: argparse.Namespace) -> int:
    """Run a reverse proxy that injects a named isolation fault (or a benign control) into a target's traffic."""
    if args.list:
        _print_catalog()
        return 0
    if not args.target:
        print("error: --target URL is required (or --list)", file=sys.stderr)
        return 2

    def show(inj: Injection) -> None:
        print(f"[{inj.seq}] op={inj.op} user={inj.user} {inj.fault}: {inj.detail}", flush=True)

    try:
        fp = FaultProxy(args.target, fault=args.fault, rate=args.rate, seed=args.seed, host=args.host,
                        port=args.port, timeout_s=args.timeout, on_injection=None if args.quiet else show)
        fp.start()
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"proxy listening on {fp.url} -> {fp.target_url} (fault {fp.fault or 'none'}, rate {fp.rate:g}, "
          f"seed {fp.seed}); Ctrl-C to stop", flush=True)
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # SIGINT too: a backgrounded shell job starts with it ignored
        signal.signal(sig, lambda *_: stopped.set())
    try:
        while not stopped.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        fp.stop()
    print(f"stopped after {fp.requests_seen} generation requests, {len(fp.injections)} injections", flush=True)
    return 0
