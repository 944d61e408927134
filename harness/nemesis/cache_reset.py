"""cache-reset: `POST /reset_prefix_cache` while requests run.

vLLM 0.32 refuses a reset while blocks are held unless asked to reset running requests too
(`reset_running_requests=true`: they are preempted and computed again); it answers
`{"success": false}` when it refused. Only a reset the server said it made counts as taken effect.
"""

from __future__ import annotations

import json

import httpx

from harness.driver.driver import now
from harness.history.record import NemesisAction

RESET_PATH = "/reset_prefix_cache"


async def reset(http: httpx.AsyncClient, details: dict[str, object]) -> NemesisAction:
    """One reset; the record says whether it took effect (HTTP 200 and not `success: false`)."""
    sent = now()
    try:
        resp = await http.post(RESET_PATH, params={"reset_running_requests": "true"})
        status: int | None = resp.status_code
        body = resp.text
    except httpx.HTTPError as exc:
        status, body = None, f"{type(exc).__name__}: {exc}"
    done = now()
    took = status == 200 and _success(body)
    return NemesisAction("cache-reset", done, "reset", took_effect=took,
                         details={**details, "sent_s": sent, "status": status, "response": body[:200]})


def _success(body: str) -> bool:
    """vLLM says `{"success": bool}`; a server that answers 200 with anything else is taken at its word."""
    try:
        data = json.loads(body)
    except ValueError:
        return True
    return not (isinstance(data, dict) and data.get("success") is False)
