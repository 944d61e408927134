"""`salt-merge`: every tenant's cache salt replaced by one shared value."""

from __future__ import annotations

from harness.faults.base import register
from harness.faults.salt import SaltFault

MERGED_SALT = "harness-fault-merged-salt"


@register
class SaltMerge(SaltFault):
    name = "salt-merge"
    changes = "Replaces every request's `cache_salt` with one shared value."
    models = ("a salt derived from the wrong identity (a shared org or API-key id instead of the tenant), so "
              "different tenants hash into one cache domain.")

    def edit(self, body: dict[str, object], salt: object) -> str:
        body["cache_salt"] = MERGED_SALT
        return f"replaced cache_salt {salt!r} with {MERGED_SALT!r}"
