"""What one restart of the embedded vLLM server costs: the `restart` nemesis's price per act.

Starts the embedded server, then stops and starts it again `--repeats` times, printing each phase's
wall time (a restart is a stop plus a start on the same settings). Wall time is the figure here:
the server's start is three processes importing vLLM in turn, not the harness's CPU.

    .venv/bin/python -m bench.restart_time [--repeats 2]
"""

from __future__ import annotations

import argparse
import time

from harness.stacks.vllm import EmbeddedServer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="restarts to time after the first start")
    args = parser.parse_args()
    server = EmbeddedServer()
    try:
        t = time.monotonic()
        server.start()
        print(f"first start {time.monotonic() - t:.1f} s", flush=True)
        for _ in range(args.repeats):
            t = time.monotonic()
            server.stop()
            stopped = time.monotonic()
            server.start()
            done = time.monotonic()
            print(f"restart {done - t:.1f} s (stop {stopped - t:.1f} s, start {done - stopped:.1f} s)", flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
