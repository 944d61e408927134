"""Credentials on every request: the run's key and headers, each tenant's own identity, secrets kept
out of what is written, the opt-in for disruptive actions, model choice and the identity labels of
a gateway that sets salts. Against a fake server that records what it received."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import httpx
import pytest

from harness.client import GenerationRequest, TargetClient
from harness.client.connection import Connection, CredentialError, parse_header, tenant_identity, using
from harness.engine import RunOptions, run
from harness.frontends.config import ConfigError, parse_table
from harness.frontends.target_args import connection_from
from harness.plan.identity import domain_label, wire_body, with_identity_domains
from harness.plan.resolve import ResolveError, select_model
from harness.reporters.reproducer import curl_command
from harness.scenario.model import Scenario
from harness.stacks.external import ExternalStack
from harness.verdict import Verdict
from tests.fake_stack import MODEL, FakeStack


class Recorder:
    """A MockTransport that answers like a tiny OpenAI server and keeps every request."""

    def __init__(self, status: int = 200) -> None:
        self.requests: list[httpx.Request] = []
        self.status = status

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.status != 200:
            return httpx.Response(self.status, json={"error": "no"})
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": MODEL}]})
        if request.url.path == "/reset_prefix_cache":
            return httpx.Response(200)
        return httpx.Response(200, json={"choices": [{"index": 0, "text": " x", "finish_reason": "length"}]})


def _client(rec: Recorder, conn: Connection) -> TargetClient:
    return TargetClient("http://target.invalid", connection=conn, transport=httpx.MockTransport(rec))


def _request(tenant: str | None = None, salt: str | None = None) -> GenerationRequest:
    return GenerationRequest(endpoint="completions", model=MODEL, prompt="hi", max_tokens=1, cache_salt=salt,
                             headers={"X-Harness-Tenant": tenant} if tenant else {})


def test_every_request_carries_the_key_and_headers_and_tenants_their_own() -> None:
    rec = Recorder()
    conn = Connection(api_key="run-key", headers=(("X-Org", "o1"),), allow_disruptive=True,
                      tenants={"acme": tenant_identity("acme", "ACME_KEY", {"X-Team": "t-${TEAM}"},
                                                       {"ACME_KEY": "acme-key", "TEAM": "red"})})

    async def go() -> None:
        async with _client(rec, conn) as c:
            await c.models()
            await c.get_text("/metrics")
            await c.reset_prefix_cache()
            await c.generate(_request())
            await c.generate(_request("acme"))
            await c.generate(_request("someone-else"))

    asyncio.run(go())
    paths = [r.url.path for r in rec.requests]
    assert paths[:3] == ["/v1/models", "/metrics", "/reset_prefix_cache"]
    gen = [r for r in rec.requests if r.url.path == "/v1/completions"]
    assert [r.headers["authorization"] for r in gen] == ["Bearer run-key", "Bearer acme-key", "Bearer run-key"]
    others = [r for r in rec.requests if r.url.path != "/v1/completions"]  # incl. token-id recovery
    assert all(r.headers["authorization"] == "Bearer run-key" for r in others)
    assert all(r.headers.get("x-org") == "o1" for r in rec.requests)
    assert gen[1].headers.get("x-team") == "t-red" and "x-team" not in gen[2].headers


def test_a_connection_in_force_reaches_clients_made_without_one() -> None:
    rec = Recorder()

    async def go() -> None:
        async with TargetClient("http://target.invalid", transport=httpx.MockTransport(rec)) as c:
            await c.models()

    with using(Connection(api_key="k1")):
        asyncio.run(go())
    assert rec.requests[0].headers["authorization"] == "Bearer k1"


def test_cache_reset_needs_the_opt_in() -> None:
    rec = Recorder()

    async def reset(conn: Connection) -> bool:
        async with _client(rec, conn) as c:
            return await c.reset_prefix_cache()

    assert asyncio.run(reset(Connection())) is False and not rec.requests  # nothing sent
    assert asyncio.run(reset(Connection(allow_disruptive=True))) is True and len(rec.requests) == 1


def test_missing_and_malformed_credentials_are_clear_errors() -> None:
    with pytest.raises(CredentialError, match="tenant 'acme': environment variable ACME_KEY"):
        tenant_identity("acme", "ACME_KEY", None, {})
    with pytest.raises(CredentialError, match="SECRET is not set"):
        tenant_identity("acme", None, {"X-Key": "${SECRET}"}, {})
    with pytest.raises(CredentialError, match="NAME=VALUE"):
        parse_header("no separator")
    assert parse_header("X-A=b:c") == ("X-A", "b:c") and parse_header("X-A: b=c") == ("X-A", "b=c")


def _args(**kw: object) -> argparse.Namespace:
    base: dict[str, object] = dict(api_key=None, header=None, ca_bundle=None, insecure=None, client_cert=None,
                                   client_key=None, allow_disruptive=None)
    return argparse.Namespace(**{**base, **kw})


def test_key_precedence_flag_then_harness_then_openai_then_file() -> None:
    env = {"HARNESS_API_KEY": "h", "OPENAI_API_KEY": "o", "FROM_FILE": "f"}
    assert connection_from(_args(api_key="flag"), {}, env).api_key == "flag"
    assert connection_from(_args(), {}, env).api_key == "h"
    assert connection_from(_args(), {}, {"OPENAI_API_KEY": "o"}).api_key_env == "OPENAI_API_KEY"
    conn = connection_from(_args(), {"api_key_env": "FROM_FILE"}, {"FROM_FILE": "f"})
    assert conn.api_key == "f" and conn.api_key_env == "FROM_FILE"
    with pytest.raises(CredentialError, match="FROM_FILE"):
        connection_from(_args(), {"api_key_env": "FROM_FILE"}, {})


def test_config_file_names_variables_never_keys(tmp_path: Path) -> None:
    values = parse_table({"api-key-env": "GW_KEY", "headers": {"X-Org": "o1"}, "model": "m", "gateway-salts": True,
                          "tenants": {"acme": {"api_key_env": "ACME_KEY", "headers": {"X-T": "a"}}}}, "f", tmp_path)
    conn = connection_from(_args(header=["X-Org=o2"]), values, {"GW_KEY": "g", "ACME_KEY": "a"})
    assert conn.base_headers() == {"X-Org": "o2", "Authorization": "Bearer g"}
    assert conn.tenant_headers() == {"acme": {"X-T": "a", "Authorization": "Bearer a"}}
    with pytest.raises(ConfigError, match="not read from a file"):
        parse_table({"api-key": "sk-123"}, "f", tmp_path)
    with pytest.raises(ConfigError, match="unknown key"):
        parse_table({"tenants": {"acme": {"api_key": "sk-123"}}}, "f", tmp_path)


def test_redact_removes_every_secret() -> None:
    conn = Connection(api_key="sk-secret-1", headers=(("X-Key", "hdr-secret"),),
                      tenants={"a": tenant_identity("a", "A", None, {"A": "tenant-secret"})})
    text = conn.redact("sk-secret-1 hdr-secret tenant-secret Bearer tenant-secret")
    assert "secret" not in text.replace("***", "")


def test_model_choice_keeps_that_model_and_its_adapters() -> None:
    entries = [{"id": "a"}, {"id": "b"}, {"id": "b-lora", "parent": "b"}, {"id": "a-lora", "parent": "a"}]
    assert [e["id"] for e in select_model(entries, "b")] == ["b", "b-lora"]
    assert select_model(entries, None) == entries
    with pytest.raises(ResolveError, match="serves: a, b, b-lora, a-lora"):
        select_model(entries, "c")
    with pytest.raises(ResolveError, match="adapter of 'b'"):
        select_model(entries, "b-lora")


def test_missing_model_is_unknown_listing_what_is_served() -> None:
    sc = Scenario.model_validate({"name": "s", "tenants": [{"name": "t"}], "users": [{"name": "u", "tenant": "t"}]})
    with FakeStack() as stack:
        result = run([sc], ExternalStack(stack.base_url), RunOptions(model="no-such-model", counterfactual=False))
    assert result.verdict is Verdict.UNKNOWN and result.error is not None
    assert "'no-such-model' is not served" in result.error and MODEL in result.error


def test_identity_labels_stay_off_the_wire_and_out_of_reproducers() -> None:
    sc = Scenario.model_validate({"name": "s", "tenants": [{"name": "acme"}, {"name": "b", "cache_salt": "own"}],
                                  "users": [{"name": "u", "tenant": "acme"}, {"name": "v", "tenant": "b"}]})
    labelled = with_identity_domains(sc)
    assert [t.cache_salt for t in labelled.tenants] == [domain_label("acme", None), domain_label("b", "own")]
    assert wire_body({"cache_salt": "tenant:acme", "x": 1}, "acme") == {"x": 1}
    assert wire_body({"cache_salt": "tenant:b~own"}, "b") == {"cache_salt": "own"}
    assert wire_body({"cache_salt": "solo-12"}, "acme") == {"cache_salt": "solo-12"}
    assert wire_body({"cache_salt": "tenant:acme"}, "mallory") == {"cache_salt": "tenant:acme"}

    rec = Recorder()
    conn = Connection(gateway_salts=True, tenants={"acme": tenant_identity("acme", None, {"X-T": "1"})})

    async def go() -> None:
        async with _client(rec, conn) as c:
            await c.generate(_request("acme", "tenant:acme"))

    asyncio.run(go())
    assert b"cache_salt" not in rec.requests[0].content


def test_reproducer_reads_the_key_from_the_environment() -> None:
    from harness.history.record import Operation

    op = Operation(run="main", scenario="s", op_id="main/s/u/0", user="u", tenant="acme", turn=0, model=MODEL,
                   endpoint="completions", stream=False, cache_salt="tenant:acme",
                   request={"prompt": "hi", "cache_salt": "tenant:acme"}, invoke_s=0.0, complete_s=1.0, ok=True)
    text = curl_command("http://gw", op)
    assert '"Authorization: Bearer $HARNESS_API_KEY"' in text and "tenant:acme" not in text


def test_readme_gateway_settings_use_only_known_keys(tmp_path: Path) -> None:
    import re
    import tomllib

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("### Behind a gateway with one key per tenant"):]
    block = re.search(r"```toml\n(.*?)```", section, flags=re.S)
    assert block is not None
    values = parse_table(tomllib.loads(block.group(1)), "README", tmp_path)
    assert values["gateway_salts"] is True and set(values["tenants"]) == {"acme", "globex"}


def test_a_refused_reset_is_not_a_reset() -> None:
    """vLLM answers 200 with {"success": false} when it refuses a reset (blocks still held): a solo
    replay that relied on it would run warm, so it must read as no reset."""

    def answer(body: object) -> bool:
        def handler(request: httpx.Request) -> httpx.Response:
            return httpx.Response(200, json=body) if body is not None else httpx.Response(200)

        async def go() -> bool:
            async with TargetClient("http://target.invalid", transport=httpx.MockTransport(handler),
                                    connection=Connection(allow_disruptive=True)) as c:
                return await c.reset_prefix_cache()
        return asyncio.run(go())

    assert answer({"success": False}) is False
    assert answer({"success": True}) is True and answer(None) is True
