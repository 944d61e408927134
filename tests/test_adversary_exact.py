"""The adversary's requests are recorded exactly as sent (long strings whole, fuzzed identity headers
byte for byte), so an incident replay and a reproducer's curl send the very same request. A fake
server that keeps what it received is the judge: what it got in the run, in a triage replay and from
the reproducer's curl must be equal."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from bench.fake_server import MODEL, FakeServer
from harness.adversary.cases import Case, header_cases
from harness.client import TargetClient
from harness.driver.adversary import run_adversary
from harness.driver.sink import MemorySink
from harness.history.record import Operation, Role
from harness.incidents.replay import send, truncated
from harness.reporters.reproducer import curl_command, header_arg
from harness.scenario.io import load_scenarios
from harness.stacks.process import free_port
from tests.fake_stack import _LoopThread

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "scenarios" / "adversarial-tenant.yaml"
OWN = ("x-request-id", "x-session-id", "openai-organization", "openai-project")

Seen = tuple[dict[str, Any], dict[bytes, bytes]]


class _Keeper:
    """The fake server, keeping each request's parsed body and its identity headers' raw bytes
    under its X-Harness-Op (a list per op: the run's request first, then each replay's)."""

    def __init__(self) -> None:
        self.seen: dict[str, list[Seen]] = {}
        app = FakeServer(tokens=4, block_size=4).app()

        @web.middleware
        async def keep(request: web.Request, handler: Any) -> web.StreamResponse:
            if request.method == "POST":
                raw = {k.lower(): v for k, v in request.raw_headers if k.lower().decode() in OWN}
                body = json.loads(await request.read())
                self.seen.setdefault(request.headers.get("X-Harness-Op", "?"), []).append((body, raw))
            return await handler(request)

        app.middlewares.append(keep)
        port = free_port()
        self.loop = _LoopThread(app, port)
        self.url = f"http://127.0.0.1:{port}"

    def close(self) -> None:
        self.loop.close()


@pytest.fixture
def keeper() -> Any:
    k = _Keeper()
    yield k
    k.close()


def _cases() -> list[Case]:
    victim_cut = " " + " ".join(f"w{i}" for i in range(90))  # a victim's shared prefix: over 256 characters
    return [*header_cases(),
            Case("user=long:long", overrides={"user": "x" * 10_000}, fields=(("user", "long"),)),
            Case("confuse-before:salt=s:cut1:m0", overrides={"cache_salt": "s", "user": "s"}, prompt=victim_cut,
                 kind="confusion", phase="before"),
            Case("stop=long:many@chat", "chat", {"stop": ["y" * 300] * 3}, fields=(("stop", "long"),))]


def _fire(url: str) -> list[Operation]:
    [(_, scenario)] = load_scenarios([SCENARIO])
    sink = MemorySink()

    async def go() -> None:
        async with TargetClient(url, keepalive=False) as client:
            await run_adversary(client, scenario, _cases(), MODEL, sink, Role.ADVERSARY, 4)

    asyncio.run(go())
    return [r for r in sink.records if isinstance(r, Operation)]


def _expected(op: Operation) -> dict[bytes, bytes]:
    return {k.lower().encode("latin-1"): v.encode("latin-1") for k, v in op.headers.items()}


def test_recorded_requests_are_what_the_server_received(keeper: _Keeper) -> None:
    ops = _fire(keeper.url)
    assert len(ops) == len(_cases()) and all(o.status == 200 for o in ops), [(o.op_id, o.error) for o in ops]
    for op in ops:
        [(body, raw)] = keeper.seen[op.op_id]
        assert op.request == body and not truncated(op)
        assert raw == _expected(op), op.op_id
    assert any(len(v) == 10_000 for o in ops for v in o.request.values() if isinstance(v, str))
    assert any(b"\xdf" in v for o in ops for v in _expected(o).values())  # a Latin-1 header value, byte for byte
    assert any(o.headers and next(iter(o.headers.values())) == "" for o in ops)


def test_a_triage_replay_sends_the_same_request(keeper: _Keeper) -> None:
    ops = _fire(keeper.url)

    async def replay() -> list[int | None]:
        async with httpx.AsyncClient(base_url=keeper.url, timeout=30) as c:
            return [(await send(c, o)).status for o in ops]

    assert asyncio.run(replay()) == [200] * len(ops)
    for op in ops:
        first, again = keeper.seen[op.op_id]
        assert again == first, op.op_id


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_the_reproducers_curl_sends_the_same_request(keeper: _Keeper) -> None:
    ops = _fire(keeper.url)
    for op in ops:
        subprocess.run(["sh", "-c", curl_command(keeper.url, op, identity=True)], check=True, capture_output=True,
                       timeout=60)
        first, again = keeper.seen[op.op_id]
        assert again == first, op.op_id


def test_header_arguments_survive_the_shell_byte_for_byte() -> None:
    for value in ["\u00dfen\u00e9", "a%b\\c'd\"e", "plain value", '{"user":"x"}', "h" * 100]:
        out = subprocess.run(["sh", "-c", "printf %s " + header_arg("X-Request-Id", value)], capture_output=True,
                             check=True, timeout=30).stdout
        assert out == f"X-Request-Id: {value}".encode("latin-1")
    assert header_arg("X-Request-Id", "") == "'X-Request-Id;'"  # curl drops "Name:", sends "Name;" empty
