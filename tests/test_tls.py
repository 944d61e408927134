"""TLS to the target: `--ca-bundle`, `--insecure` and client certificates, against the fake server
served over TLS with certificates made for the test (`trustme`), on both transports, and through
the command line (`probe --json` prints JSON alone)."""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trustme
from aiohttp import web

from bench.fake_server import FakeServer
from harness.client import TargetClient
from harness.client.connection import Connection
from harness.frontends.cli import main
from harness.stacks.process import free_port


@dataclass
class TLSServer:
    url: str
    ca: Path
    client: Path  # the client certificate and its key, one PEM


def _serve(require_client_cert: bool, folder: Path) -> Iterator[TLSServer]:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(server_ctx)
    if require_client_cert:
        ca.configure_trust(server_ctx)
        server_ctx.verify_mode = ssl.CERT_REQUIRED
    ca_path, client_path = folder / "ca.pem", folder / "client.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    ca.issue_cert("harness-client").private_key_and_cert_chain_pem.write_to_path(str(client_path))

    port = free_port()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    runner = web.AppRunner(FakeServer(None, 4).app())

    async def start() -> None:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=server_ctx).start()
        ready.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    assert ready.is_set()
    try:
        yield TLSServer(f"https://localhost:{port}", ca_path, client_path)
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


@pytest.fixture
def tls(tmp_path: Path) -> Iterator[TLSServer]:
    yield from _serve(False, tmp_path)


@pytest.fixture
def mtls(tmp_path: Path) -> Iterator[TLSServer]:
    yield from _serve(True, tmp_path)


async def _models(url: str, conn: Connection, keepalive: bool) -> list[str]:
    async with TargetClient(url, connection=conn, keepalive=keepalive) as client:
        return await client.models()


@pytest.mark.parametrize("keepalive", [True, False], ids=["aiohttp", "httpx"])
def test_ca_bundle_verifies_and_default_trust_refuses(tls: TLSServer, keepalive: bool) -> None:
    assert asyncio.run(_models(tls.url, Connection(ca_bundle=tls.ca), keepalive))
    with pytest.raises(httpx.ConnectError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        asyncio.run(_models(tls.url, Connection(), keepalive))


@pytest.mark.parametrize("keepalive", [True, False], ids=["aiohttp", "httpx"])
def test_insecure_skips_verification(tls: TLSServer, keepalive: bool) -> None:
    assert asyncio.run(_models(tls.url, Connection(insecure=True), keepalive))


@pytest.mark.parametrize("keepalive", [True, False], ids=["aiohttp", "httpx"])
def test_client_certificate(mtls: TLSServer, keepalive: bool) -> None:
    assert asyncio.run(_models(mtls.url, Connection(ca_bundle=mtls.ca, client_cert=mtls.client), keepalive))
    with pytest.raises(httpx.HTTPError):
        asyncio.run(_models(mtls.url, Connection(ca_bundle=mtls.ca), keepalive))


def test_probe_over_mutual_tls_prints_json_alone(mtls: TLSServer, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["probe", "--target", mtls.url, "--ca-bundle", str(mtls.ca), "--client-cert", str(mtls.client),
                 "--json", "--timeout", "20"])
    out = capsys.readouterr().out
    assert code == 0
    caps = json.loads(out)  # stdout is the JSON and nothing else
    assert caps["target"] == mtls.url


def test_probe_without_the_ca_is_a_one_line_error(tls: TLSServer, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["probe", "--target", tls.url, "--json", "--timeout", "20"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert "error:" in captured.err
