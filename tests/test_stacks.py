"""Stacks: a new one is one class plus one registration line; owned processes die with the harness.

`TinyStack` below is a complete stack: a python child that serves HTTP and spawns a grandchild
(as vLLM's API server spawns its engine core), on the plumbing of `stacks.process.OwnedProcess`.
No real server is started here; tests/test_launcher.py has the real-vLLM counterpart.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import httpx
import psutil
import pytest

from harness.history.record import Incident
from harness.stacks import Stack, make_stack, register, stack_names, unregister
from harness.stacks.process import LaunchError, OwnedProcess
from harness.stacks.watchdog import DISARM, group_alive, watch
from tests.procs import live_members, wait_for

ROOT = Path(__file__).resolve().parents[1]

FAKE_SERVER = r"""
import http.server, subprocess, sys
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])  # a grandchild, like an engine core
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


@dataclass
class TinyStack(OwnedProcess):
    """A whole stack in a few lines: the command is all it has to say."""

    NAME: ClassVar[str] = "tiny test server"
    LOG_STEM: ClassVar[str] = "tiny"
    startup_timeout_s: float = 60.0

    def command(self) -> list[str]:
        return [sys.executable, "-c", FAKE_SERVER, str(self.port)]


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of the group, by pid."""
    return [p.pid for p in live_members(pgid)]


@pytest.fixture
def tiny(tmp_path: Path) -> Iterator[TinyStack]:
    register("tiny", TinyStack)  # the one registration line a new stack needs
    stack = make_stack(None, "tiny", log_path=tmp_path / "tiny.log")
    assert isinstance(stack, TinyStack)
    try:
        yield stack
    finally:
        stack.stop(grace_s=5)
        unregister("tiny")


def test_registered_stack_is_found_and_serves(tiny: TinyStack) -> None:
    assert "tiny" in stack_names()
    assert isinstance(tiny, Stack)
    assert tiny.traits.owned and tiny.traits.can_restart
    url = tiny.start()
    assert httpx.get(url + "/health").text == "ok"
    assert tiny.alive and tiny.events() == []
    assert tiny.pgid is not None and len(group_members(tiny.pgid)) >= 2, "server and grandchild run in one group"


def test_restart_is_an_incident_the_harness_caused(tiny: TinyStack) -> None:
    tiny.start()
    first_pid, port = tiny.proc.pid, tiny.port  # type: ignore[union-attr]
    assert tiny.restart() == f"http://127.0.0.1:{port}"
    assert tiny.proc is not None and tiny.proc.pid != first_pid
    [event] = tiny.events()
    assert isinstance(event, Incident) and event.what == "restart" and event.caused_by_harness
    assert tiny.events() == [], "events are drained"


def test_death_from_outside_is_one_incident_and_stop_cleans_the_group(tiny: TinyStack) -> None:
    tiny.start()
    assert tiny.proc is not None and tiny.pgid is not None
    pgid = tiny.pgid
    os.kill(tiny.proc.pid, signal.SIGKILL)  # the leader only: the grandchild lives on for now
    assert wait_for(lambda: not tiny.alive, 10)
    with pytest.raises(LaunchError, match="died"):
        tiny.check_alive()
    [event] = tiny.events()
    assert isinstance(event, Incident) and event.what == "server-died" and not event.caused_by_harness
    assert "-9" in event.message
    tiny.stop(grace_s=5)
    assert not group_alive(pgid) and tiny.events() == []


def test_unknown_stack_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="vllm"):
        make_stack(None, "no-such-stack")


def test_external_target_is_not_owned() -> None:
    stack = make_stack("http://127.0.0.1:9/")
    assert stack.base_url == "http://127.0.0.1:9" and not stack.traits.owned


_HOLDER = """
import sys, time
sys.path.insert(0, sys.argv[1])
from tests.test_stacks import TinyStack
stack = TinyStack(log_path=__import__("pathlib").Path(sys.argv[2]))
stack.start()
print(stack.pgid, stack.watchdog.pid, flush=True)
while True:
    stack.wait()
"""


def test_group_dies_with_a_sigkilled_harness(tmp_path: Path) -> None:
    """The harness (here a script holding a TinyStack) is SIGKILLed: the watchdog takes the server
    and its grandchild down."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(ROOT), str(tmp_path / "tiny.log")],
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    pgid = 0
    try:
        assert holder.stdout is not None
        line = holder.stdout.readline()
        pgid, watchdog_pid = (int(x) for x in line.split())
        assert len(group_members(pgid)) >= 2
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        assert wait_for(lambda: not group_members(pgid), 30), f"left running: {group_members(pgid)}"
        assert wait_for(lambda: not psutil.pid_exists(watchdog_pid)
                        or psutil.Process(watchdog_pid).status() == psutil.STATUS_ZOMBIE, 10)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        if pgid and group_members(pgid):
            os.killpg(pgid, signal.SIGKILL)


def _sleeper_group() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"], start_new_session=True)


def test_watch_kills_the_group_on_end_of_file() -> None:
    victim = _sleeper_group()
    read_fd, write_fd = os.pipe()
    try:
        os.close(write_fd)  # the harness is gone
        assert watch(read_fd, victim.pid, grace_s=5) == 0
        assert victim.wait(timeout=10) == -signal.SIGTERM
    finally:
        os.close(read_fd)
        if victim.poll() is None:
            victim.kill()
            victim.wait()


def test_watch_leaves_the_group_alone_when_disarmed() -> None:
    victim = _sleeper_group()
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, DISARM)
        os.close(write_fd)
        assert watch(read_fd, victim.pid, grace_s=5) == 0
        assert victim.poll() is None
    finally:
        os.close(read_fd)
        victim.kill()
        victim.wait()
