"""`harness serve`: run the embedded vLLM server in the foreground until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from harness.cli import command
from harness.target.embedded import EmbeddedServer, LaunchError


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=8000, help="loopback port (default 8000)")
    p.add_argument("--model-dir", type=Path, default=None, help="model folder (default: build the embedded model)")
    p.add_argument("--log", type=Path, default=None, help="server log file (default .cache/logs/vllm-PORT.log)")
    p.add_argument("--startup-timeout", type=float, default=600.0, help="seconds to wait for health")


@command("serve", _configure)
def serve(args: argparse.Namespace) -> int:
    """Start the embedded vLLM server (prefix caching, salts, cached-token counts, reset, adapters)."""
    server = EmbeddedServer(model_dir=args.model_dir, port=args.port, log_path=args.log,
                            startup_timeout_s=args.startup_timeout)
    print(f"starting embedded vLLM on 127.0.0.1:{args.port} (log: {args.log or '.cache/logs/'}) ...", flush=True)
    try:
        server.start()
    except LaunchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"ready at {server.base_url} after {server.startup_s:.1f} s; Ctrl-C to stop", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        while server.alive:
            server.proc.wait()  # type: ignore[union-attr]
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    if server.proc is not None and server.proc.returncode not in (0, -15, None):
        print(f"server exited with code {server.proc.returncode}", file=sys.stderr)
        return 2
    return 0
