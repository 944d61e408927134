"""The watchdog that takes a launched server's whole process group down when the harness dies.

`PR_SET_PDEATHSIG` reaches only direct children, and vLLM's engine and worker processes are
grandchildren; so every owned server runs in a process group of its own, and this tiny process
(started by `stacks.process.OwnedProcess`, in a session of its own so a Ctrl-C or a `kill` of the
harness's group does not take it first) holds the read end of a pipe whose write end only the
harness holds. End of file on the pipe without the word `disarm` before it means the harness is
gone, however it died (SIGKILL included): the watchdog terminates the group, waits a grace period,
kills what is left, and exits. docs/design.md, "The pipeline".

Standard library only: it runs as a script (`python .../watchdog.py FD PGID GRACE_S`), in
whatever interpreter started the harness, with the harness package possibly not importable. The
group helpers are also imported by `stacks.process`, so there is one copy of them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

DISARM = b"disarm"
"""Written by the harness before it closes the pipe on a normal stop: exit without killing."""


def group_alive(pgid: int) -> bool:
    """True while a process of the group exists that is not a zombie (zombies hold no resources)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc_root = Path("/proc")
    if not proc_root.is_dir():
        return True
    for stat in proc_root.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # after "(comm)": state ppid pgrp ...
        if len(fields) >= 3 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def signal_group(pgid: int, sig: int) -> None:
    """Send `sig` to the group; a group that is already gone is not an error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def wait_group_gone(pgid: int, timeout_s: float, poll: Callable[[], object] | None = None) -> bool:
    """Poll until the group has no live process (True) or the timeout passes (False). `poll`, if
    given, is called each round (a parent reaps its own child with it)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if poll is not None:
            poll()
        if not group_alive(pgid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)  # polling an external process group's exit, bounded by the deadline


def kill_group(pgid: int, grace_s: float, poll: Callable[[], object] | None = None) -> bool:
    """SIGTERM the group, SIGKILL whatever outlives `grace_s`; True once nothing of it lives."""
    if group_alive(pgid):
        signal_group(pgid, signal.SIGTERM)
        wait_group_gone(pgid, grace_s, poll)
    if group_alive(pgid):
        signal_group(pgid, signal.SIGKILL)
        wait_group_gone(pgid, 30.0, poll)  # a killed worker may take seconds to free its memory
    return not group_alive(pgid)


def watch(fd: int, pgid: int, grace_s: float) -> int:
    """Block on the pipe; on end of file without `DISARM`, kill the group. Returns the exit code."""
    seen = b""
    while True:
        try:
            chunk = os.read(fd, 64)
        except InterruptedError:
            continue
        if not chunk:
            break
        seen += chunk
        if DISARM in seen:
            return 0
    return 0 if kill_group(pgid, grace_s) else 1


def main(argv: list[str]) -> int:
    # Not to be stopped by the terminal's Ctrl-C or hang-up: the harness handles those itself,
    # and if it does not survive them this process must outlive it to clean up.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    fd, pgid, grace_s = int(argv[1]), int(argv[2]), float(argv[3])
    return watch(fd, pgid, grace_s)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
