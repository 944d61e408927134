"""Launch the embedded default server: vLLM with prefix caching on the tiny local model.

The server runs as a subprocess in its own process group on a loopback port, with prefix
caching, cached-token details, the cache reset endpoint, block size 32 and both LoRA adapters.
`EmbeddedServer` waits for health with a timeout, streams the log to a file, raises
`LaunchError` quoting the log tail when the server exits early or never gets healthy, and kills
the whole process group on exit (also on Ctrl-C, a failed test, or interpreter exit).
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import httpx

SERVED_MODEL_NAME = "tiny-llama"
DEFAULT_STARTUP_TIMEOUT_S = 600.0


class LaunchError(RuntimeError):
    """The embedded server could not be started or died; the message quotes its log."""


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


@dataclass
class EmbeddedServer:
    """The embedded vLLM server; use as a context manager or call start()/stop()."""

    NAME: ClassVar[str] = "embedded vLLM"
    HEALTH_PATH: ClassVar[str] = "/health"  # answers 200 once the model is loaded

    model_dir: Path | None = None
    port: int | None = None
    log_path: Path | None = None
    startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S
    extra_args: list[str] = field(default_factory=list)
    python: str = sys.executable
    host: str = "127.0.0.1"
    """Address the server listens on; 0.0.0.0 serves other machines (a container's port). Health
    checks and `base_url` still use the loopback address."""
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    pgid: int | None = field(default=None, init=False)
    base_url: str = field(default="", init=False)
    startup_s: float | None = field(default=None, init=False)
    restarts: int = field(default=0, init=False)

    def command(self, model_dir: Path, port: int) -> list[str]:
        from harness.testmodel.embedded_model import adapter_dirs

        adapters = [f"{name}={path}" for name, path in adapter_dirs(model_dir).items()]
        return [
            self.python, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(model_dir),
            "--served-model-name", SERVED_MODEL_NAME,
            "--host", self.host, "--port", str(port),
            "--dtype", "float32",
            "--max-model-len", "2048",
            "--enable-prefix-caching",
            "--enable-prompt-tokens-details",
            "--block-size", "32",
            "--gpu-memory-utilization", "0.3",
            "--kv-cache-memory-bytes", str(1 << 30),
            "--enable-lora", "--max-lora-rank", "8", "--max-loras", "2",
            "--lora-modules", *adapters,
            *self.extra_args,
        ]

    def start(self) -> str:
        if self.model_dir is None:
            from harness.testmodel.embedded_model import build

            self.model_dir = build()
        if not Path(self.model_dir).is_dir():
            raise LaunchError(f"model folder does not exist: {self.model_dir}")
        self._claim_port_and_log("vllm")
        env = dict(os.environ, VLLM_SERVER_DEV_MODE="1", PYTHONUNBUFFERED="1")
        env.setdefault("VLLM_LOGGING_LEVEL", "INFO")
        return self._launch(self.command(Path(self.model_dir), self.port), env)

    def _claim_port_and_log(self, log_stem: str) -> None:
        """Pick a free port (or check the one asked for) and the log file `.cache/logs/STEM-PORT.log`."""
        if self.port is None:
            self.port = free_port()
        elif port_in_use(self.port):
            raise LaunchError(f"port {self.port} on 127.0.0.1 is already in use; pick another with --port")
        if self.log_path is None:
            self.log_path = Path(".cache") / "logs" / f"{log_stem}-{self.port}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)

    def _launch(self, cmd: list[str], env: dict[str, str]) -> str:
        """Start `cmd` in its own process group, logging to log_path, and wait for health."""
        assert self.log_path is not None and self.port is not None
        with open(self.log_path, "ab" if self.restarts else "wb") as log:
            try:
                self.proc = subprocess.Popen(
                    cmd,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                    env=env,
                )
            except OSError as exc:
                raise LaunchError(f"cannot start {self.python}: {exc}") from exc
        # start_new_session makes the server the leader of a new group whose id is its pid.
        # Remember it now: once the leader has died and been reaped, os.getpgid() cannot find it,
        # but its children (engine core, workers) still belong to the group and must be killed.
        self.pgid = self.proc.pid
        atexit.register(self.stop)
        self.base_url = f"http://127.0.0.1:{self.port}"
        t0 = time.monotonic()
        try:
            self._wait_healthy(t0)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - t0
        return self.base_url

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

    def restart(self) -> str:
        """Stop the server and start a fresh process on the same port: its caches start empty.
        The log is appended to, not replaced."""
        self.stop()
        self.restarts += 1
        return self.start()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        """Raise LaunchError with the log tail if the server has died."""
        if self.proc is not None and self.proc.poll() is not None and self.log_path is not None:
            raise LaunchError(
                f"embedded vLLM died (exit code {self.proc.returncode}); log {self.log_path}:\n{tail(self.log_path)}"
            )

    def stop(self, grace_s: float = 20.0) -> None:
        """Terminate the whole process group; SIGKILL whatever outlives the grace period.

        Returns once no live process of the group is left (or after a bounded wait), so a
        caller may rely on the port and the memory being free.
        """
        proc = self.proc
        if proc is None:
            return
        pgid = self.pgid if self.pgid is not None else proc.pid
        if _group_alive(pgid):
            _signal_group(pgid, signal.SIGTERM)
            _wait_group_gone(pgid, proc, grace_s)
        if _group_alive(pgid):
            _signal_group(pgid, signal.SIGKILL)
            _wait_group_gone(pgid, proc, 30.0)  # a killed worker may take seconds to free its memory
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        atexit.unregister(self.stop)

    def __enter__(self) -> "EmbeddedServer":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _group_alive(pgid: int) -> bool:
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


def _wait_group_gone(pgid: int, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Poll until the group has no live process, reaping our own child as it exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        proc.poll()
        if not _group_alive(pgid):
            return
        time.sleep(0.1)  # polling an external process group's exit, bounded by the deadline


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
