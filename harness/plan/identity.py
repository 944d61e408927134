"""Cache domains from tenants' identities, for targets behind a gateway that sets the salts.

A gateway that authenticates one key per tenant and sets each tenant's `cache_salt` itself makes
the tenant's identity its cache domain: the harness never sees the salt the server gets. With
`gateway_salts` each tenant's requests carry the label `tenant:NAME` (followed by `~SALT` where
the scenario gives the tenant a salt of its own; vLLM refuses `/` in a salt) as their cache salt,
and the history records that label, so the checks' cache domains (docs/design.md, "Cache
accounting (black-box)") are the tenants. The label never reaches the wire (`wire_body`: the
client sends what a real tenant would, no salt or the scenario's own), so the gateway's mapping
alone decides the server's domains: a gateway that maps two tenants to one salt lets one
tenant's hits come from the other's requests, which the cache-accounting check then cannot
explain (a FAIL). Salts that are not labels (the solo replay's fresh salt per request) are sent
as they are: a gateway that scopes a client's salt to the client's tenant keeps them fresh.
"""

from __future__ import annotations

from typing import Any

from harness.scenario.model import Scenario

LABEL_PREFIX = "tenant:"
SEPARATOR = "~"


def domain_label(tenant: str, salt: str | None) -> str:
    """The cache salt the harness sends (and records) for `tenant` when the gateway sets salts."""
    return LABEL_PREFIX + tenant + (SEPARATOR + salt if salt else "")


def wire_body(body: dict[str, Any], tenant: str) -> dict[str, Any]:
    """`body` of a request of `tenant` as sent to a gateway that sets salts: `tenant`'s identity
    label dropped from `cache_salt` (the scenario's own salt, if any, kept). Other bodies (no
    label, or another tenant's) come back unchanged."""
    salt = body.get("cache_salt")
    label = domain_label(tenant, None)
    if not isinstance(salt, str) or not (salt == label or salt.startswith(label + SEPARATOR)):
        return body
    out = dict(body)
    own = salt[len(label) + len(SEPARATOR):]
    if own:
        out["cache_salt"] = own
    else:
        del out["cache_salt"]
    return out


def with_identity_domains(scenario: Scenario) -> Scenario:
    """`scenario` with each tenant's cache salt replaced by its identity label (`domain_label`)."""
    tenants = [t.model_copy(update={"cache_salt": domain_label(t.name, t.cache_salt)}) for t in scenario.tenants]
    return scenario.model_copy(update={"tenants": tenants})
