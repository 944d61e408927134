"""The embedded launcher's failure paths: each gives a clear LaunchError and leaves no process behind.

A harness run that leaks a vLLM process keeps gigabytes of memory and a port, and the next run
fails in a confusing way; so every failure path here ends with a check that the server's whole
process group is gone. Only the dying-server test starts a real server (about 30-50 s here);
the others fail before or early in start-up.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from harness.stacks.vllm import EmbeddedServer, LaunchError, port_in_use
from harness.testmodel.embedded_model import build
from tests.procs import live_members, wait_for


def assert_group_gone(pgid: int, timeout_s: float = 30.0) -> None:
    """Poll until killpg(pgid, 0) finds nothing (or only unreaped zombies); fail if anything lives on."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        live = live_members(pgid)
        if not live:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"process group {pgid} left running: {[(p.pid, p.name()) for p in live]}")
        time.sleep(0.1)  # polling another process's exit, bounded by the deadline


def _is_running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def assert_quotes_log(message: str, log: Path) -> None:
    """The error carries the log tail verbatim (the log only grows, so it is still in the file)."""
    assert ":\n" in message, message
    quoted = message.split(":\n", 1)[1]
    assert quoted.strip() and quoted in log.read_text(errors="replace"), "the error must quote the server log"


@pytest.fixture
def model_dir() -> Path:
    """The real embedded model (a cached no-op build after the first)."""
    return build()


@pytest.fixture
def server_cleanup() -> Iterator[list[EmbeddedServer]]:
    """Servers registered here are stopped even when the test fails half-way."""
    servers: list[EmbeddedServer] = []
    yield servers
    for s in servers:
        s.stop(grace_s=5)


def test_missing_model_folder(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    server = EmbeddedServer(model_dir=missing, log_path=tmp_path / "log")
    with pytest.raises(LaunchError, match="does not exist") as info:
        server.start()
    assert str(missing) in str(info.value)
    assert server.proc is None


def test_port_in_use(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        server = EmbeddedServer(model_dir=tmp_path, port=port, log_path=tmp_path / "log")
        with pytest.raises(LaunchError, match="in use") as info:
            server.start()
    assert str(port) in str(info.value)
    assert server.proc is None


def test_port_in_time_wait_is_free() -> None:
    """A port whose server closed its connections (TIME_WAIT) is free for the next server."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = listener.accept()
        conn.close()  # the server side closes first, so its side enters TIME_WAIT
        client.recv(1)
        client.close()
    assert not port_in_use(port)


def test_startup_timeout_leaves_no_process(model_dir: Path, tmp_path: Path,
                                           server_cleanup: list[EmbeddedServer]) -> None:
    server = EmbeddedServer(model_dir=model_dir, log_path=tmp_path / "vllm.log", startup_timeout_s=2.0)
    server_cleanup.append(server)
    with pytest.raises(LaunchError, match="not healthy") as info:
        server.start()
    assert str(tmp_path / "vllm.log") in str(info.value)
    assert server.pgid is not None
    assert_group_gone(server.pgid)
    assert not server.alive


def test_folder_that_is_not_a_model_exits_early(tmp_path: Path, server_cleanup: list[EmbeddedServer]) -> None:
    empty = tmp_path / "empty-model"
    empty.mkdir()
    log = tmp_path / "vllm.log"
    server = EmbeddedServer(model_dir=empty, log_path=log, startup_timeout_s=300)
    server_cleanup.append(server)
    t0 = time.monotonic()
    with pytest.raises(LaunchError, match="exited with code") as info:
        server.start()
    assert time.monotonic() - t0 < 300, "the launcher waited for the timeout instead of noticing the exit"
    assert_quotes_log(str(info.value), log)
    assert server.pgid is not None
    assert_group_gone(server.pgid)


@pytest.mark.integration
def test_dying_server_is_reported_and_cleaned_up(model_dir: Path, tmp_path: Path,
                                                  server_cleanup: list[EmbeddedServer]) -> None:
    log = tmp_path / "vllm.log"
    server = EmbeddedServer(model_dir=model_dir, log_path=log)
    server_cleanup.append(server)
    server.start()
    server.check_alive()  # healthy: no error
    assert server.proc is not None and server.pgid is not None
    pgid, port = server.pgid, server.port
    children = [p.pid for p in psutil.Process(server.proc.pid).children(recursive=True)]
    assert children, "vLLM runs its engine in child processes; the test needs them to mean anything"

    os.kill(server.proc.pid, signal.SIGKILL)
    assert wait_for(lambda: not server.alive, 30), "the killed server still looks alive"
    with pytest.raises(LaunchError, match="died") as info:
        server.check_alive()
    message = str(info.value)
    assert "-9" in message and str(log) in message
    assert_quotes_log(message, log)

    server.stop(grace_s=10)
    assert_group_gone(pgid)
    assert not [pid for pid in children if _is_running(pid)]
    assert wait_for(lambda: not port_in_use(port), 10), f"port {port} still held after stop()"  # type: ignore[arg-type]


@pytest.mark.integration
def test_sigkilled_serve_leaves_no_process(tmp_path: Path) -> None:
    """`harness serve` killed with SIGKILL (a CI timeout, an OOM kill): its watchdog takes the vLLM
    server down, engine and worker processes included, and frees the port (issue 24)."""
    import subprocess
    import sys

    from harness.stacks.process import free_port

    port = free_port()
    serve = subprocess.Popen([str(Path(sys.executable).parent / "kvbleed"), "serve", "--port", str(port),
                              "--log", str(tmp_path / "serve.log")],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    launched: list[int] = []
    try:
        assert serve.stdout is not None
        lines = []
        for line in serve.stdout:
            lines.append(line)
            if line.startswith(("ready", "error")):
                break
        assert lines and lines[-1].startswith("ready"), "".join(lines)
        launched = [p.pid for p in psutil.Process(serve.pid).children(recursive=True)]
        assert len(launched) >= 3, "expected the watchdog, the API server and its engine core"
        os.kill(serve.pid, signal.SIGKILL)  # the harness only, not its group: the watchdog must act
        serve.wait(timeout=10)
        assert wait_for(lambda: not [pid for pid in launched if _is_running(pid)], 60), \
            f"left running: {[pid for pid in launched if _is_running(pid)]}"
        assert wait_for(lambda: not port_in_use(port), 10), f"port {port} still held"
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
        for pid in launched:
            if _is_running(pid):
                os.kill(pid, signal.SIGKILL)
