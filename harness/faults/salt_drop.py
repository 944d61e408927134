"""`salt-drop`: the cache salt stripped by one layer of the stack."""

from __future__ import annotations

from harness.faults.base import register
from harness.faults.salt import SaltFault


@register
class SaltDrop(SaltFault):
    name = "salt-drop"
    changes = "Strips `cache_salt` from the request before forwarding it."
    models = ("a salt ignored by one layer of the stack (router, gateway, an API version that drops the field), "
              "so salted tenants share cache blocks.")

    def edit(self, body: dict[str, object], salt: object) -> str:
        del body["cache_salt"]
        return f"dropped cache_salt {salt!r}"
