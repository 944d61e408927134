"""The replica tag: which replica of a fleet served each request (docs/design.md, "Cache accounting").

Loaded into each embedded vLLM replica of `stacks.fleet` with vLLM's `--middleware` option. For
every request it appends one line to the replica's ledger (env `HARNESS_REPLICA_LEDGER`): the
replica's name (env `HARNESS_REPLICA`) and the request's `X-Harness-Op` header, which the driver
sets on every request and the router passes on. It also answers with an `X-Harness-Replica`
response header. The ledger line is written when the request arrives, before the engine sees it,
so a request that failed, or that the router retried on another replica, is still on record.

A replica given `HARNESS_REPLICA_DIE_AT=K` kills its own process group (SIGKILL) when its K-th
labelled request arrives, after recording it: the replica-failure nemesis of `stacks.fleet`, at
an exact request rather than at a moment in time, so a failing run replays the same way.

Why a ledger and not metrics deltas: with several requests in flight, a change in a replica's
counters cannot say which request caused it; an exact per-request key can.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any

OP_HEADER = "x-harness-op"
REPLICA_HEADER = "x-harness-replica"
_seen = [0]  # labelled requests this process has received


async def tag(request: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
    """Starlette HTTP middleware: record (replica, op) for every request that names its op."""
    replica = os.environ.get("HARNESS_REPLICA", "")
    op = request.headers.get(OP_HEADER)
    ledger = os.environ.get("HARNESS_REPLICA_LEDGER")
    if op is not None and ledger:
        line = json.dumps({"replica": replica, "op": op, "path": request.url.path}) + "\n"
        fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())  # one write of a short line on O_APPEND: never interleaved
        finally:
            os.close(fd)
    if op is not None:
        _seen[0] += 1
        if str(_seen[0]) == os.environ.get("HARNESS_REPLICA_DIE_AT"):
            os.killpg(os.getpgrp(), signal.SIGKILL)  # the whole replica: server and engine at once
    response = await call_next(request)
    response.headers[REPLICA_HEADER] = replica
    return response
