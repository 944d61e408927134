"""Real deployments: a server behind an authenticating gateway with one key per tenant, where the
gateway (Debian's nginx with its JavaScript module, `make gateway`; tests/gateway/) sets each
tenant's cache salt.

- The gateway itself: a missing key is refused (401), tenants reach /v1/ only, and a tenant that
  sends another tenant's salt under its own key stays in its own cache domain.
- The harness through it: wrong keys end in UNKNOWN naming the 401; a gateway misconfigured to map
  two tenants to one salt is caught (FAIL); against the embedded vLLM (started with its own API
  key) the run gives the same verdict and violations with and without the gateway, both policies.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness.client import GenerationRequest, TargetClient
from harness.client.connection import Connection, tenant_identity
from harness.engine import RunOptions, run
from harness.frontends.cli import main
from harness.result import RunResult
from harness.scenario.model import Scenario
from harness.stacks import make_stack
from harness.stacks.external import ExternalStack
from harness.verdict import Verdict
from tests.fake_stack import MODEL, FakeStack
from tests.gateway.nginx import Gateway, TenantKey, available

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not available(), reason="nginx with its JavaScript module: `make gateway`")]

OPERATOR = "op-key-0000"
UPSTREAM = "upstream-key-0000"
KEYS = {"key-acme-1111": TenantKey("acme", "salt-acme"), "key-globex-2222": TenantKey("globex", "salt-globex"),
        "key-mallory-3333": TenantKey("mallory", "salt-mallory")}
ENV = {"ACME_KEY": "key-acme-1111", "GLOBEX_KEY": "key-globex-2222"}

# Two tenants, two users each, one system prompt common to all; one request at a time in list order,
# so globex's first request comes after acme's have filled the cache with the common prompt.
SCENARIO = Scenario.model_validate({
    "name": "gateway-tenants", "description": "two tenants over one common system prompt", "max_tokens": 8,
    "seed": 23, "shared_prefixes": [{"name": "sys", "words": 70}],
    "tenants": [{"name": "acme", "secrets": 1}, {"name": "globex", "secrets": 1}],
    "users": [{"name": "a1", "tenant": "acme", "prefixes": ["sys"], "private_words": 20},
              {"name": "g1", "tenant": "globex", "prefixes": ["sys"], "private_words": 20},
              {"name": "a2", "tenant": "acme", "prefixes": ["sys"], "private_words": 14},
              {"name": "g2", "tenant": "globex", "prefixes": ["sys"], "private_words": 14}],
    "schedule": {"concurrency": 1, "interleaving": "lockstep"},
})


def tenants_connection(api_key: str = OPERATOR, environ: dict[str, str] | None = None) -> Connection:
    """The operator's key for the harness's own requests, each tenant's key (read from its
    environment variable) for its users' requests."""
    env = ENV if environ is None else environ
    ids = {t: tenant_identity(t, var, None, env) for t, var in (("acme", "ACME_KEY"), ("globex", "GLOBEX_KEY"))}
    return Connection(api_key=api_key, tenants=ids)


def drive(url: str, conn: Connection, policy: str, gateway_salts: bool) -> RunResult:
    return run([SCENARIO], ExternalStack(url), RunOptions(policy=policy, connection=conn, gateway_salts=gateway_salts))


def signature(result: RunResult) -> tuple[Verdict, list[tuple[str, str, tuple[str, ...]]]]:
    """What must agree between two runs: the verdict and each violation's check, scenario and users."""
    return result.verdict, sorted((v.check, v.scenario, tuple(sorted(v.users))) for v in result.violations)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeStack]:
    with FakeStack() as stack:
        yield stack


def _gateway(upstream: str, folder: Path, keys: dict[str, TenantKey] = KEYS,
             upstream_key: str | None = None) -> Gateway:
    return Gateway(upstream, folder, tenants=keys, operator_key=OPERATOR, upstream_key=upstream_key)


def test_gateway_refuses_unknown_keys_and_keeps_tenants_off_admin_paths(fake: FakeStack, tmp_path: Path) -> None:
    with _gateway(fake.base_url, tmp_path) as gw:
        assert httpx.get(gw.url + "/v1/models").status_code == 401
        assert httpx.get(gw.url + "/v1/models", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert httpx.get(gw.url + "/v1/models", headers={"Authorization": "Bearer key-acme-1111"}).status_code == 200
        assert httpx.post(gw.url + "/reset_prefix_cache", headers={"Authorization": "Bearer key-acme-1111"}
                          ).status_code == 403
        assert httpx.get(gw.url + "/v1/models", headers={"Authorization": f"Bearer {OPERATOR}"}).status_code == 200


async def _cached(client: TargetClient, tenant: str | None, prompt: str, salt: str | None) -> int:
    headers = {"X-Harness-Tenant": tenant} if tenant else {}
    result = await client.generate(GenerationRequest(endpoint="completions", model=MODEL, prompt=prompt, max_tokens=2,
                                                     cache_salt=salt, headers=headers))
    assert result.ok, result.error
    assert result.cached_tokens is not None
    return result.cached_tokens


def test_tenant_sending_another_tenants_salt_gets_its_own_domain(fake: FakeStack, tmp_path: Path) -> None:
    prompt = " ".join(f"w{i}" for i in range(40))
    env = {**ENV, "MALLORY_KEY": "key-mallory-3333"}
    conn = Connection(api_key=OPERATOR, tenants={
        "globex": tenant_identity("globex", "GLOBEX_KEY", None, env),
        "mallory": tenant_identity("mallory", "MALLORY_KEY", None, env)})

    async def go(url: str) -> tuple[int, int, int]:
        async with TargetClient(url, connection=conn) as client:
            await _cached(client, "globex", prompt, None)  # globex's domain: its gateway salt
            # The operator's salt passes unchanged: globex's domain is reachable as "salt-globex" ...
            operator = await _cached(client, None, prompt, "salt-globex")
            # ... and a second globex request hits (the positive control) ...
            control = await _cached(client, "globex", prompt, None)
            # ... but mallory, sending globex's salt under its own key, lands in its own domain.
            stolen = await _cached(client, "mallory", prompt, "salt-globex")
            return operator, control, stolen

    with _gateway(fake.base_url, tmp_path) as gw:
        operator, control, stolen = asyncio.run(go(gw.url))
    assert operator > 0 and control > 0, (operator, control)
    assert stolen == 0


def test_wrong_operator_key_is_unknown_naming_the_401(fake: FakeStack, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HARNESS_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with _gateway(fake.base_url, tmp_path / "gw") as gw:
        assert main(["probe", "--target", gw.url, "--json"]) == 2
        probed = capsys.readouterr()
        assert probed.out == "" and "HTTP 401" in probed.err and "no API key" in probed.err, probed.err
        monkeypatch.setenv("HARNESS_API_KEY", "not-a-key-9999")
        code = main(["run", "--target", gw.url, "--report-dir", str(tmp_path / "r"), "--no-counterfactual"])
    err = capsys.readouterr().err
    assert code == 2
    assert "HTTP 401" in err and "HARNESS_API_KEY" in err, err
    assert "not-a-key-9999" not in err and "not-a-key-9999" not in (tmp_path / "r" / "report.json").read_text()


def test_wrong_tenant_key_is_unknown_naming_the_tenant_and_the_401(fake: FakeStack, tmp_path: Path) -> None:
    conn = tenants_connection(environ={**ENV, "GLOBEX_KEY": "stale-key-5555"})
    with _gateway(fake.base_url, tmp_path) as gw:
        result = drive(gw.url, conn, "salted", gateway_salts=True)
    assert result.verdict is Verdict.UNKNOWN
    assert result.error is not None and "globex" in result.error and "HTTP 401" in result.error, result.error
    assert "GLOBEX_KEY" in result.error and "stale-key-5555" not in result.error
    assert not result.history.ops  # stopped before any tenant traffic


def test_gateway_salts_pass_on_a_correct_gateway_and_fail_on_one_mapping_two_tenants_to_one_salt(
        fake: FakeStack, tmp_path: Path) -> None:
    good = drive_through(fake.base_url, tmp_path / "good", KEYS)
    assert good.verdict is Verdict.PASS, good.decision.reasons
    shared = {k: TenantKey(t.tenant, "salt-shared") for k, t in KEYS.items()}
    bad = drive_through(fake.base_url, tmp_path / "bad", shared)
    assert bad.verdict is Verdict.FAIL, bad.decision.reasons
    assert any(v.check == "cache-accounting" and "g1" in v.users for v in bad.violations), bad.violations


def drive_through(upstream: str, folder: Path, keys: dict[str, TenantKey], upstream_key: str | None = None,
                  policy: str = "salted") -> RunResult:
    with _gateway(upstream, folder, keys, upstream_key) as gw:
        return drive(gw.url, tenants_connection(), policy, gateway_salts=True)


# --- the embedded vLLM with its own API key, with and without the gateway ------------------------


@pytest.fixture(scope="module")
def keyed_vllm() -> Iterator[str]:
    """The embedded vLLM started with its own API key (`kvbleed serve --api-key` does the same)."""
    server = make_stack(None, "vllm", extra_env={"VLLM_API_KEY": UPSTREAM})
    server.start()
    try:
        yield server.base_url
    finally:
        server.stop()


@pytest.mark.parametrize("policy", ["shared-prefix", "salted"])
def test_same_verdict_and_violations_with_and_without_the_gateway(keyed_vllm: str, tmp_path: Path,
                                                                  policy: str) -> None:
    assert httpx.get(keyed_vllm + "/v1/models").status_code == 401  # the server enforces its own key
    direct = drive(keyed_vllm, Connection(api_key=UPSTREAM), policy, gateway_salts=False)
    behind = drive_through(keyed_vllm, tmp_path, KEYS, UPSTREAM, policy)
    assert behind.history.ops and direct.history.ops
    assert signature(behind) == signature(direct), (behind.decision.reasons, direct.decision.reasons)
    assert direct.verdict is not Verdict.UNKNOWN, direct.decision.reasons


def test_misconfigured_gateway_is_caught_on_the_embedded_server(keyed_vllm: str, tmp_path: Path) -> None:
    shared = {k: TenantKey(t.tenant, "salt-shared") for k, t in KEYS.items()}
    bad = drive_through(keyed_vllm, tmp_path, shared, UPSTREAM)
    assert bad.verdict is Verdict.FAIL, bad.decision.reasons
    assert any(v.check == "cache-accounting" and "g1" in v.users for v in bad.violations), bad.violations
