"""The plumbing every stack the harness launches shares: `OwnedProcess`.

A server process on a loopback port, in a process group of its own, with its log in a file, a
bounded wait for health, a `LaunchError` quoting the log tail when it exits early or never gets
healthy, a stop that kills the whole group (engine and worker processes included), a restart on
the same port (a fresh process: empty caches), and the deaths and restarts it saw as history
`Incident`s. Each launch also starts the watchdog of `stacks.watchdog`, so that the group dies
with the harness even when the harness is killed with SIGKILL.

A new stack is a subclass that says how to prepare its inputs and which command to run
(`prepare`, `command`, `environment`); see `stacks.vllm` and `stacks.llamacpp`.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Self

import httpx

from harness.history.record import Event, Incident
from harness.stacks.base import StackTraits
from harness.stacks.watchdog import DISARM, kill_group

WATCHDOG_SCRIPT = Path(__file__).with_name("watchdog.py")


class LaunchError(RuntimeError):
    """A launched server could not be started or died; the message quotes its log."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_in_use(port: int) -> bool:
    """True when something holds the port; TIME_WAIT leftovers of a stopped server do not count."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # The server binds with SO_REUSEADDR, so must this check, or a just-stopped server's
        # TIME_WAIT connections would make a free port look taken.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def restart_incident(name: str, restarts: int) -> Incident:
    """The record of a restart the harness asked for (excluded from attribution: it caused it)."""
    return Incident(what="restart", at_s=history_time(), caused_by_harness=True,
                    message=f"{name} restarted by the harness (restart {restarts})")


def history_time() -> float:
    """Now, on the clock the driver stamps operations with, so incidents order among them."""
    from harness.driver.driver import now

    return now()


@dataclass
class OwnedProcess:
    """A server the harness launches and owns; use as a context manager or call start()/stop()."""

    NAME: ClassVar[str] = "server"
    LOG_STEM: ClassVar[str] = "server"
    HEALTH_PATH: ClassVar[str] = "/health"  # answers 200 once the server can serve
    WATCHDOG_GRACE_S: ClassVar[float] = 10.0  # SIGTERM to SIGKILL when the harness has died

    port: int | None = None
    log_path: Path | None = None
    startup_timeout_s: float = 600.0
    host: str = "127.0.0.1"
    """Address the server listens on; 0.0.0.0 serves other machines (a container's port). Health
    checks and `base_url` still use the loopback address."""
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    pgid: int | None = field(default=None, init=False)
    base_url: str = field(default="", init=False)
    startup_s: float | None = field(default=None, init=False)
    restarts: int = field(default=0, init=False)
    watchdog: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _watch_fd: int | None = field(default=None, init=False, repr=False)
    _events: list[Event] = field(default_factory=list, init=False, repr=False)
    _death_seen: bool = field(default=False, init=False, repr=False)

    # --- what a stack says about itself -------------------------------------------------------

    def prepare(self) -> None:
        """Build or check the inputs (model files) before a port is claimed; raise LaunchError."""

    def command(self) -> list[str]:
        """The server's command line; `self.port` is set."""
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return dict(os.environ, PYTHONUNBUFFERED="1")

    @property
    def traits(self) -> StackTraits:
        return StackTraits(owned=True, can_restart=True)

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> str:
        """Launch the server and wait for health; return the base URL."""
        self.prepare()
        self._claim_port_and_log()
        return self._launch(self.command(), self.environment())

    def restart(self) -> str:
        """Stop the server and start a fresh process on the same port: its caches start empty.
        The log is appended to, not replaced. Recorded as an incident the harness caused."""
        self.stop()
        self.restarts += 1
        self._events.append(restart_incident(self.NAME, self.restarts))
        return self.start()

    @property
    def alive(self) -> bool:
        if self.proc is None:
            return False
        if self.proc.poll() is None:
            return True
        self._note_death()
        return False

    def check_alive(self) -> None:
        """Raise LaunchError with the log tail if the server has died."""
        if self.proc is not None and self.proc.poll() is not None and self.log_path is not None:
            self._note_death()
            raise LaunchError(f"{self.NAME} died (exit code {self.proc.returncode}); log {self.log_path}:\n"
                              f"{tail(self.log_path)}")

    def wait(self) -> int | None:
        """Block until the server process exits (its exit code), or return None if none runs."""
        if self.proc is None:
            return None
        code = self.proc.wait()
        self._note_death()
        return code

    @property
    def returncode(self) -> int | None:
        """The server process's exit code once it has exited, else None."""
        return None if self.proc is None else self.proc.poll()

    def events(self) -> list[Event]:
        """The restarts and deaths seen since the last call, oldest first."""
        if self.proc is not None and self.proc.poll() is not None:
            self._note_death()  # a death nobody has looked at yet
        out, self._events = self._events, []
        return out

    def stop(self, grace_s: float = 20.0) -> None:
        """Terminate the whole process group; SIGKILL whatever outlives the grace period.

        Returns once no live process of the group is left (or after a bounded wait), so a
        caller may rely on the port and the memory being free. Idempotent.
        """
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is not None:
            self._note_death()
        self._death_seen = True  # from here on an exit is the harness's doing
        pgid = self.pgid if self.pgid is not None else proc.pid
        kill_group(pgid, grace_s, proc.poll)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        self._disarm_watchdog()
        atexit.unregister(self.stop)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- plumbing -----------------------------------------------------------------------------

    def _claim_port_and_log(self) -> None:
        """Pick a free port (or check the one asked for) and the log file `.cache/logs/STEM-PORT.log`."""
        if self.port is None:
            self.port = free_port()
        elif port_in_use(self.port):
            raise LaunchError(f"port {self.port} on 127.0.0.1 is already in use; pick another with --port")
        if self.log_path is None:
            self.log_path = Path(".cache") / "logs" / f"{self.LOG_STEM}-{self.port}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)

    def _launch(self, cmd: list[str], env: dict[str, str]) -> str:
        """Start `cmd` in its own process group under the watchdog, logging to log_path, and wait
        for health."""
        assert self.log_path is not None and self.port is not None
        with open(self.log_path, "ab" if self.restarts else "wb") as log:
            try:
                self.proc = subprocess.Popen(
                    cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True, env=env,
                )
            except OSError as exc:
                raise LaunchError(f"cannot start {cmd[0]}: {exc}") from exc
        # start_new_session makes the server the leader of a new group whose id is its pid.
        # Remember it now: once the leader has died and been reaped, os.getpgid() cannot find it,
        # but its children (engine core, workers) still belong to the group and must be killed.
        self.pgid = self.proc.pid
        self._death_seen = False
        atexit.register(self.stop)
        self.base_url = f"http://127.0.0.1:{self.port}"
        t0 = time.monotonic()
        try:
            self._start_watchdog(self.pgid)
            self._wait_healthy(t0)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - t0
        return self.base_url

    def _start_watchdog(self, pgid: int) -> None:
        """The watchdog process: it kills the group when the harness dies (`stacks.watchdog`)."""
        read_fd, write_fd = os.pipe()  # both ends non-inheritable: no other child holds them
        try:
            self.watchdog = subprocess.Popen(
                [sys.executable, str(WATCHDOG_SCRIPT), str(read_fd), str(pgid), str(self.WATCHDOG_GRACE_S)],
                pass_fds=(read_fd,), start_new_session=True,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            )
        except OSError as exc:
            os.close(write_fd)
            raise LaunchError(f"cannot start the process watchdog: {exc}") from exc
        finally:
            os.close(read_fd)
        self._watch_fd = write_fd

    def _disarm_watchdog(self) -> None:
        """Tell the watchdog the group is stopped on purpose, and reap it."""
        if self._watch_fd is not None:
            with contextlib.suppress(OSError):  # the watchdog is gone already
                os.write(self._watch_fd, DISARM)
            os.close(self._watch_fd)
            self._watch_fd = None
        if self.watchdog is not None:
            try:
                self.watchdog.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.watchdog.kill()
                self.watchdog.wait()
            self.watchdog = None

    def _note_death(self) -> None:
        """Record, once, that the server exited without the harness asking it to."""
        if self._death_seen or self.proc is None:
            return
        self._death_seen = True
        self._events.append(Incident(
            what="server-died", at_s=history_time(), caused_by_harness=False,
            message=f"{self.NAME} exited with code {self.proc.returncode}; log {self.log_path}",
        ))

    def _wait_healthy(self, t0: float) -> None:
        assert self.proc is not None and self.log_path is not None
        while True:
            code = self.proc.poll()
            if code is not None:
                raise LaunchError(
                    f"{self.NAME} exited with code {code} during start-up; log {self.log_path}:\n"
                    f"{tail(self.log_path)}"
                )
            try:
                if httpx.get(self.base_url + self.HEALTH_PATH, timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() - t0 > self.startup_timeout_s:
                raise LaunchError(
                    f"{self.NAME} not healthy after {self.startup_timeout_s:.0f} s; log {self.log_path}:\n"
                    f"{tail(self.log_path)}"
                )
            time.sleep(0.5)  # readiness polling of an external process, not test synchronisation
