"""The flags every command that talks to a target shares: credentials, headers, TLS, and the
opt-in for disruptive actions; and the `Connection` they (with the environment and the
configuration file) describe.

Precedence, highest first: the flag, the environment variable (`HARNESS_API_KEY`, else
`OPENAI_API_KEY`), the configuration file (`api-key-env`, `headers`, `ca-bundle`, ...).
A key is never read from a file: a file names the environment variable that holds it.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.client.connection import (
    Connection,
    CredentialError,
    TenantIdentity,
    expand,
    key_from_env,
    parse_header,
    tenant_identity,
)

ENVIRONMENT = {
    "HARNESS_TARGET": "base URL of the target (--target)",
    "HARNESS_API_KEY": "API key sent as `Authorization: Bearer` (--api-key); else OPENAI_API_KEY",
    "HARNESS_POLICY": "isolation policy of `run` (--policy)",
    "HARNESS_REPORT_DIR": "report folder of `run` (--report-dir)",
    "HARNESS_HTTP_TRANSPORT": "auto (default), aiohttp or httpx",
}
"""The environment variables the command line reads, for --help."""


def add_target_args(p: argparse.ArgumentParser) -> None:
    """Credential, header and TLS flags (defaults None: unset flags fall back to the environment
    and the configuration file)."""
    g = p.add_argument_group("credentials and TLS")
    g.add_argument("--api-key", default=None, metavar="KEY",
                   help="API key for every request (default: $HARNESS_API_KEY, else $OPENAI_API_KEY; "
                   "prefer the variable: a flag shows in the process list)")
    g.add_argument("--header", action="append", default=None, metavar="NAME=VALUE",
                   help="extra header on every request (repeatable; ${VAR} in VALUE is read from the environment)")
    g.add_argument("--ca-bundle", type=Path, default=None, metavar="PEM",
                   help="CA certificates to verify the target's TLS certificate with")
    g.add_argument("--insecure", action="store_true", default=None,
                   help="do not verify the target's TLS certificate")
    g.add_argument("--client-cert", type=Path, default=None, metavar="PEM",
                   help="client certificate for TLS (with its key in the same file, or --client-key)")
    g.add_argument("--client-key", type=Path, default=None, metavar="PEM", help="private key of --client-cert")
    g.add_argument("--allow-disruptive", action="store_true", default=None,
                   help="allow actions that disturb other users of a target the harness did not launch "
                   "(prefix-cache resets); always allowed on a server it launched")


def connection_from(args: argparse.Namespace, file_values: Mapping[str, Any] | None = None,
                    environ: Mapping[str, str] | None = None) -> Connection:
    """The Connection the flags, the environment and the file's settings describe (raises CredentialError)."""
    env = os.environ if environ is None else environ
    fv = file_values or {}

    def pick(name: str) -> Any:
        value = getattr(args, name, None)
        return value if value is not None else fv.get(name)

    key, key_env = (args.api_key, None) if getattr(args, "api_key", None) else key_from_env(env)
    if key is None and fv.get("api_key_env"):
        key_env = str(fv["api_key_env"])
        key = env.get(key_env)
        if not key:
            raise CredentialError(f"api-key-env: environment variable {key_env} is not set")
    headers: list[tuple[str, str]] = [(k, expand(v, f"header {k}", env)) for k, v in (fv.get("headers") or {}).items()]
    for text in getattr(args, "header", None) or []:
        name, value = parse_header(text)
        headers = [(k, v) for k, v in headers if k.lower() != name.lower()]
        headers.append((name, expand(value, f"header {name}", env)))
    tenants: dict[str, TenantIdentity] = {
        name: tenant_identity(name, spec.get("api_key_env"), spec.get("headers"), env)
        for name, spec in (fv.get("tenants") or {}).items()}
    cert, cert_key = pick("client_cert"), pick("client_key")
    if cert_key is not None and cert is None:
        raise CredentialError("--client-key needs --client-cert")
    return Connection(api_key=key or None, api_key_env=key_env, headers=tuple(headers), ca_bundle=pick("ca_bundle"),
                      insecure=bool(pick("insecure")), client_cert=cert, client_key=cert_key, tenants=tenants,
                      allow_disruptive=bool(pick("allow_disruptive")))
