"""How the harness reaches a target: credentials, extra headers, TLS, per-tenant identities, and
whether it may disrupt a server it did not launch.

A real endpoint sits behind a gateway that wants an API key (often one per tenant, so that the
gateway, not the client, sets each tenant's cache salt), over TLS. One `Connection` describes all
of that for a run; every `TargetClient` made while it is current (`using`) sends its headers on
every request (generation, probe, health, metrics, reset) and a request carrying a tenant's
`X-Harness-Tenant` header also that tenant's own headers. Secrets live only here: nothing in a
history, report or reproducer holds them (reproducers read them from environment variables).
"""

from __future__ import annotations

import contextvars
import os
import re
import ssl
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

KEY_ENV = "HARNESS_API_KEY"
FALLBACK_KEY_ENV = "OPENAI_API_KEY"
TENANT_HEADER = "X-Harness-Tenant"


class CredentialError(ValueError):
    """A credential that cannot be used (an unset environment variable, a malformed header)."""


@dataclass(frozen=True)
class TenantIdentity:
    """One tenant's own headers (its `Authorization` among them when it has a key)."""

    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    key_env: str | None = None
    """The environment variable its key was read from (named in messages and reproducers)."""


@dataclass(frozen=True)
class Connection:
    """Credentials, headers and TLS settings for one target; see the module docstring."""

    api_key: str | None = field(default=None, repr=False)
    api_key_env: str | None = None
    """Where `api_key` came from (HARNESS_API_KEY, OPENAI_API_KEY), or None for a flag or nothing."""
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    ca_bundle: Path | None = None
    insecure: bool = False
    client_cert: Path | None = None
    client_key: Path | None = None
    tenants: Mapping[str, TenantIdentity] = field(default_factory=dict)
    allow_disruptive: bool = False
    """Cache resets (and other actions that disturb other users) against a server the harness did
    not launch; the engine sets it for a server it launched."""
    gateway_salts: bool = False
    """A gateway sets each tenant's cache salt: identity labels (`harness.plan.identity`) are
    dropped from the bodies of requests sent with a tenant's identity."""

    def base_headers(self) -> dict[str, str]:
        """Headers for every request: the extra headers, then the key's `Authorization`."""
        out = {name: value for name, value in self.headers}
        if self.api_key:
            out = {k: v for k, v in out.items() if k.lower() != "authorization"}
            out["Authorization"] = f"Bearer {self.api_key}"
        return out

    def tenant_headers(self) -> dict[str, dict[str, str]]:
        """tenant -> the headers its requests carry on top of (and over) the base headers."""
        return {name: dict(t.headers) for name, t in self.tenants.items() if t.headers}

    def secrets(self) -> list[str]:
        """Every secret value this connection holds (for `redact`)."""
        values = [self.api_key] if self.api_key else []
        values += [v for _, v in self.headers]
        values += [v for t in self.tenants.values() for v in t.headers.values()]
        return [v for v in values if len(v) >= 4]

    def redact(self, text: str) -> str:
        """`text` with every secret of this connection replaced by `***`."""
        for value in sorted(self.secrets(), key=len, reverse=True):
            text = text.replace(value, "***")
            if value.startswith("Bearer "):
                text = text.replace(value.removeprefix("Bearer "), "***")
        return text

    def verify(self) -> ssl.SSLContext | bool:
        """What httpx's `verify` (and aiohttp's `ssl`) get: True (the default trust store) unless a
        CA bundle, `insecure` or a client certificate is set."""
        if self.ca_bundle is None and not self.insecure and self.client_cert is None:
            return True
        ctx = ssl.create_default_context(cafile=str(self.ca_bundle) if self.ca_bundle else None)
        if self.ca_bundle is None:
            import certifi

            ctx.load_verify_locations(certifi.where())
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.client_cert is not None:
            ctx.load_cert_chain(str(self.client_cert), str(self.client_key) if self.client_key else None)
        return ctx

    def with_tenants(self, tenants: Mapping[str, TenantIdentity]) -> Connection:
        return replace(self, tenants={**self.tenants, **tenants})


def parse_header(text: str) -> tuple[str, str]:
    """`NAME=VALUE` (or `NAME: VALUE`) -> (NAME, VALUE)."""
    sep = "=" if "=" in text and (":" not in text or text.index("=") < text.index(":")) else ":"
    name, found, value = text.partition(sep)
    name, value = name.strip(), value.strip()
    if not found or not name or any(c in name for c in " \t\r\n") or "\n" in value or "\r" in value:
        raise CredentialError(f"header {text!r}: expected NAME=VALUE")
    return name, value


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand(value: str, what: str, environ: Mapping[str, str] | None = None) -> str:
    """`value` with each `${VAR}` replaced from the environment (so files name secrets, never hold
    them); an unset variable is a CredentialError naming `what`."""
    env = os.environ if environ is None else environ

    def one(m: re.Match[str]) -> str:
        if m.group(1) not in env:
            raise CredentialError(f"{what}: environment variable {m.group(1)} is not set")
        return env[m.group(1)]

    return _VAR.sub(one, value)


def key_from_env(environ: Mapping[str, str] | None = None) -> tuple[str | None, str | None]:
    """(key, the variable it came from): HARNESS_API_KEY, else OPENAI_API_KEY, else (None, None)."""
    env = os.environ if environ is None else environ
    for name in (KEY_ENV, FALLBACK_KEY_ENV):
        if env.get(name):
            return env[name], name
    return None, None


def tenant_identity(tenant: str, api_key_env: str | None, headers: Mapping[str, str] | None,
                    environ: Mapping[str, str] | None = None) -> TenantIdentity:
    """A tenant's identity from the name of the variable holding its key and its extra headers."""
    env = os.environ if environ is None else environ
    out = {k: expand(v, f"tenant {tenant!r} header {k}", env) for k, v in (headers or {}).items()}
    if api_key_env:
        key = env.get(api_key_env)
        if not key:
            raise CredentialError(f"tenant {tenant!r}: environment variable {api_key_env} (its API key) is not set")
        out = {k: v for k, v in out.items() if k.lower() != "authorization"}
        out["Authorization"] = f"Bearer {key}"
    return TenantIdentity(out, api_key_env)


_CURRENT: contextvars.ContextVar[Connection] = contextvars.ContextVar("harness_connection")
_OUTSIDE_RUNS = Connection(allow_disruptive=True)


def current() -> Connection:
    """The connection in force. Outside `using` (library use, the pytest plugin): the key of
    HARNESS_API_KEY / OPENAI_API_KEY if set, and a client does what it is asked; every frontend
    and `engine.run` set one, so a run against a server the harness did not launch disrupts it
    only when told to (`allow_disruptive`)."""
    conn = _CURRENT.get(None)
    if conn is not None:
        return conn
    key, var = key_from_env()
    return replace(_OUTSIDE_RUNS, api_key=key, api_key_env=var) if key else _OUTSIDE_RUNS


@contextmanager
def using(connection: Connection) -> Iterator[Connection]:
    """Make `connection` current for the block (threads and event loops started inside inherit it)."""
    token = _CURRENT.set(connection)
    try:
        yield connection
    finally:
        _CURRENT.reset(token)
