"""Process helpers shared by the launcher and stack tests: a process group's live members, and
bounded polling of a condition."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import psutil


def live_members(pgid: int) -> list[psutil.Process]:
    """Processes of the group that still run (zombies hold no memory or port, so they do not count)."""
    live = []
    for p in psutil.process_iter(["status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                live.append(p)
        except (ProcessLookupError, psutil.Error):
            continue
    return live


def wait_for(condition: Callable[[], object], timeout_s: float) -> bool:
    """Poll a zero-argument condition until it holds or the timeout passes."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)  # bounded condition polling, not a fixed delay
    return True
