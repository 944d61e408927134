"""adapter-churn: LoRA adapters unloaded and loaded again mid-run (vLLM's runtime adapter updates,
`VLLM_ALLOW_RUNTIME_LORA_UPDATING`), including one tenant's weights under another tenant's name.

Each load is recorded with the weights it put under the name (a digest of the adapter's files),
so the checks can tell the name's cache domains apart (`harness.nemesis.epochs.AdapterEpochs`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx

from harness.driver.driver import now
from harness.history.record import NemesisAction

ENV = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
"""What the embedded server needs in its environment for runtime adapter updates."""


def weights_digest(path: Path) -> str:
    """A digest of an adapter folder's files (names and bytes): equal weights, equal digest."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode() + b"\0")
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def initial(sources: dict[str, Path], digests: dict[str, str]) -> NemesisAction:
    """The record of which weights each adapter name holds at the start (before any churn)."""
    return NemesisAction("adapter-churn", now(), "initial",
                         details={"weights": {n: digests[n] for n in sources},
                                  "paths": {n: str(p) for n, p in sources.items()}})


async def swap(http: httpx.AsyncClient, name: str, weights_of: str, sources: dict[str, Path],
               digests: dict[str, str], details: dict[str, object]) -> list[NemesisAction]:
    """Unload `name`, then load `weights_of`'s adapter folder under it: two records."""
    out = []
    sent = now()
    status, body = await _post(http, "/v1/unload_lora_adapter", {"lora_name": name})
    out.append(NemesisAction("adapter-churn", now(), "unload", took_effect=status == 200,
                             details={**details, "adapter": name, "sent_s": sent, "status": status,
                                      "response": body[:200]}))
    sent = now()
    path = sources[weights_of]
    status, body = await _post(http, "/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(path)})
    out.append(NemesisAction("adapter-churn", now(), "load", took_effect=status == 200,
                             details={**details, "adapter": name, "weights_of": weights_of, "path": str(path),
                                      "weights": digests[weights_of], "sent_s": sent, "status": status,
                                      "response": body[:200]}))
    return out


async def _post(http: httpx.AsyncClient, path: str, body: dict[str, str]) -> tuple[int | None, str]:
    try:
        resp = await http.post(path, json=body)
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {exc}"
    return resp.status_code, resp.text
