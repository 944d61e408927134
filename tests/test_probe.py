"""The capability probe against the real embedded server, and its failure paths on bad targets.

The checks rely on the probe's verdicts (a salt test is only meaningful next to a positive
control), so these tests pin down that each capability the embedded server has is reported as
verified, that a degraded target is reported honestly, and that a bad target is a clean exit 2.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from harness.client import TargetClient
from harness.frontends.cli import main
from harness.probe.capabilities import Capabilities, probe, request_fields
from harness.testmodel.embedded_model import ADAPTER_NAMES


@pytest.fixture(scope="module")
async def caps(embedded_url: str) -> Capabilities:
    """One probe of the real server, shared by the assertions below."""
    async with TargetClient(embedded_url) as client:
        return await probe(client)


def test_probe_reports_caching_capabilities(caps: Capabilities) -> None:
    for name in ("prefix_caching", "cached_tokens", "cache_salt_accepted", "cache_salt_effective",
                 "prefix_cache_metrics", "cache_reset"):
        cap = getattr(caps, name)
        assert cap.available is True, f"{name}: {cap.evidence}"
    assert caps.cached_tokens.value > 0
    assert caps.block_size.available and caps.block_size.value == 32, caps.block_size.evidence


def test_probe_reports_models_endpoints_and_tokens(caps: Capabilities) -> None:
    assert caps.reachable.available and caps.openai_compatible.available
    assert caps.base_model == "tiny-llama"
    assert sorted(caps.verified_adapters) == sorted(ADAPTER_NAMES)
    for name in ("completions", "chat", "output_token_ids", "prompt_token_ids", "streaming", "logprobs", "version"):
        assert getattr(caps, name).available is True, f"{name}: {getattr(caps, name).evidence}"
    assert caps.logprobs.value >= 5
    assert caps.version.value


def test_probe_reads_request_fields_from_openapi(caps: Capabilities) -> None:
    assert caps.openapi.available
    fields = caps.openapi.value
    for endpoint in ("completions", "chat"):
        assert {"model", "max_tokens", "cache_salt", "seed"} <= set(fields[endpoint])
    assert "prompt" in fields["completions"] and "messages" in fields["chat"]


def test_capabilities_json_round_trips(caps: Capabilities) -> None:
    data = json.loads(json.dumps(caps.to_json()))
    assert data["capabilities"]["cache_salt_effective"]["available"] is True
    assert set(data["adapters"]) == set(ADAPTER_NAMES)
    assert all(isinstance(c["evidence"], str) and c["evidence"] for c in data["capabilities"].values())


class _StripCachedTokens(httpx.AsyncBaseTransport):
    """A transport that hides usage.prompt_tokens_details, like a stack that does not report it."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        resp = await self.inner.handle_async_request(request)
        if not resp.headers.get("content-type", "").startswith("application/json"):
            return resp
        data = json.loads(await resp.aread())
        await resp.aclose()
        if isinstance(data, dict) and isinstance(data.get("usage"), dict):
            data["usage"].pop("prompt_tokens_details", None)
        return httpx.Response(resp.status_code, json=data)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_probe_falls_back_to_metrics_without_cached_counts(embedded_url: str) -> None:
    """Without cached-token counts the probe says so, and still sees hits through /metrics."""
    async with TargetClient(embedded_url, transport=_StripCachedTokens()) as client:
        caps = await probe(client)
    assert caps.cached_tokens.available is False
    assert caps.prefix_caching.available is True and "metrics" in caps.prefix_caching.evidence
    assert caps.cache_salt_effective.available is True, caps.cache_salt_effective.evidence


def test_cli_probe_writes_json(embedded_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "caps.json"
    assert main(["probe", "--target", embedded_url, "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["capabilities"]["prefix_caching"]["available"] is True
    printed = capsys.readouterr().out
    assert "cache_salt_effective" in printed and "evidence" in printed


def test_cli_probe_unreachable_target_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["probe", "--target", "http://127.0.0.1:9", "--timeout", "5"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "cannot reach" in lines[0], captured.err
    assert captured.out == ""


class _NotOpenAI(BaseHTTPRequestHandler):
    """Answers every request with an HTML page: 404, or 200 for the 'html200' flavour."""

    status = 404

    def do_GET(self) -> None:
        body = b"<html><body>nothing here</body></html>"
        self.send_response(self.status)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(params=[404, 200], ids=["html404", "html200"])
def not_openai_url(request: pytest.FixtureRequest) -> Iterator[str]:
    handler = type("Handler", (_NotOpenAI,), {"status": request.param})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_cli_probe_non_openai_server_exits_2(not_openai_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["probe", "--target", not_openai_url, "--timeout", "5"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "not an OpenAI-compatible server" in lines[0], captured.err


def test_request_fields_resolves_refs_and_unions() -> None:
    doc = {
        "paths": {"/v1/completions": {"post": {"requestBody": {"content": {"application/json": {
            "schema": {"anyOf": [{"$ref": "#/components/schemas/A"}, {"$ref": "#/components/schemas/B"}]}}}}}}},
        "components": {"schemas": {"A": {"properties": {"model": {}, "prompt": {}}},
                                   "B": {"properties": {"model": {}, "cache_salt": {}}}}},
    }
    assert request_fields(doc, "/v1/completions") == ["model", "prompt", "cache_salt"]
    assert request_fields(doc, "/v1/chat/completions") is None
