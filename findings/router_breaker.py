"""Stand-alone reproducer for the finding `vllm-router-0.1.17-breaker-denies-every-tenant` (see
findings/vllm-router-0.1.17-circuit-breaker.md).

Usage: python findings/router_breaker.py http://ROUTER [MODEL]
(for example `kvbleed serve --stack vllm-fleet`, which prints the router's URL). Tenant B sends one
ordinary request; tenant A then sends a burst of requests the replicas refuse, first with HTTP 4xx
(an invalid `max_tokens`), then with HTTP 500 (a non-object `structured_outputs`, which vLLM 0.32
answers with 500); after each burst tenant B sends its ordinary request again. Prints every status
and exits 1 when B's ordinary request was refused after A's burst: A's errors denied B service.
A circuit breaker stays open for a while (60 s by default), so the script waits before each burst
until B is served again.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
import time

import httpx

BURST = 12
"""Refused requests per burst: above vllm-router's default failure threshold."""


async def main(url: str, model: str) -> int:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        async def send(tenant: str, extra: dict[str, object]) -> int:
            body = {"model": model, "prompt": f" {tenant} asks about punu bubimu napa", "max_tokens": 4,
                    "temperature": 0, "cache_salt": f"{tenant}-{secrets.token_hex(4)}", **extra}
            r = await client.post("/v1/completions", json=body, headers={"X-Harness-Tenant": tenant})
            return r.status_code

        async def b_served(wait_s: float = 150.0) -> int:
            deadline = time.monotonic() + wait_s
            while True:
                status = await send("tenant-b", {})
                if status == 200 or time.monotonic() > deadline:
                    return status
                await asyncio.sleep(5.0)  # a breaker's timeout: polled, not a synchronisation

        denied = 0
        for label, extra in (("HTTP 4xx (max_tokens=-1)", {"max_tokens": -1}),
                             ("HTTP 500 (structured_outputs=\"x\")", {"structured_outputs": "x"})):
            before = await b_served()
            print(f"tenant B, ordinary request: HTTP {before}")
            statuses = [await send("tenant-a", extra) for _ in range(BURST)]
            after = await send("tenant-b", {})
            print(f"tenant A, {BURST} requests refused with {label}: statuses {statuses}")
            print(f"tenant B, the same ordinary request right after: HTTP {after}"
                  + ("  <- denied because of tenant A's errors" if after != 200 and before == 200 else ""))
            denied += after != 200 and before == 200
    return 1 if denied else 0


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args:
        raise SystemExit(__doc__)
    raise SystemExit(asyncio.run(main(args[0].rstrip("/"), args[1] if len(args) > 1 else "tiny-llama")))
