"""Where one streamed request's CPU goes, layer by layer, in one process on the fake server.

    .venv/bin/python -m bench.bench_layers [--requests 2000] [--concurrency 64] [--repeats 3]

Each layer is timed with `time.process_time` over the same requests (streamed /v1/completions,
128-word prompt, 16 tokens, top-5 logprobs, token ids), interleaved, median of the repeats; the
fake server and this process are pinned to different cores where there are two:
- `aiohttp`: aiohttp alone, each `data:` line parsed with orjson (about what `vllm bench serve`
  does per request, without its bookkeeping);
- `httpx`: httpx's API over `httpx-aiohttp` as `TargetClient` sends it, bytes read, nothing parsed;
- `client`: `TargetClient.generate` (SSE events, JSON, token ids and logprobs into a result);
- `driver`: `drive_run` with a client that answers at once: scheduling plus the JSONL history.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPT = " ".join(["word"] * 128)


def _request(stream: bool = True) -> Any:
    from harness.client import GenerationRequest

    return GenerationRequest(endpoint="completions", model="fake-model", prompt=PROMPT, max_tokens=16,
                             top_logprobs=5, stream=stream)


async def _cpu_per_request(n: int, c: int, fn: Callable[[], Awaitable[None]]) -> float:
    sem = asyncio.Semaphore(c)

    async def one() -> None:
        async with sem:
            await fn()

    t0 = time.process_time()
    await asyncio.gather(*(one() for _ in range(n)))
    return (time.process_time() - t0) / n * 1000


async def aiohttp_layer(url: str, n: int, c: int) -> float:
    import aiohttp
    import orjson

    body = _request().body()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=c)) as s:
        async def fn() -> None:
            async with s.post(url + "/v1/completions", json=body) as r:
                async for line in r.content:
                    line = line.strip()
                    if line.startswith(b"data: ") and line != b"data: [DONE]":
                        orjson.loads(line[6:])
        return await _cpu_per_request(n, c, fn)


async def httpx_layer(url: str, n: int, c: int) -> float:
    from harness.client import TargetClient

    req = _request()
    async with TargetClient(url) as tc:
        async def fn() -> None:
            resp = await tc._http.send(tc._request(req, True), stream=True)
            async for _ in resp.aiter_bytes():
                pass
            await resp.aclose()
        return await _cpu_per_request(n, c, fn)


async def client_layer(url: str, n: int, c: int) -> float:
    from harness.client import TargetClient

    req = _request()
    async with TargetClient(url) as tc:
        async def fn() -> None:
            result = await tc.generate(req)
            assert result.ok, result.error
        return await _cpu_per_request(n, c, fn)


async def driver_layer(url: str, n: int, c: int) -> float:
    from bench.bench_driver import MODEL, _scenario
    from harness.client import GenerationResult
    from harness.driver.driver import RunSpec, drive_run
    from harness.history.record import HistoryWriter
    from harness.scenario.render import make_nonce, plan_scenario

    sc = _scenario(n, 1, c, "random", True, "completions", 16, 60, 61, 1)
    nonce = make_nonce()
    spec = RunSpec("main", sc, plan_scenario(sc, nonce), nonce, {u.name: MODEL for u in sc.users},
                   {u.name: None for u in sc.users})

    class Instant:
        base_url, timeout_s = url, 60.0

        async def generate(self, req: Any) -> GenerationResult:
            req.body()
            await asyncio.sleep(0)
            return GenerationResult(ok=True, status=200, output_token_ids=list(range(16)), output_text=" w" * 16,
                                    token_logprobs=[-0.5] * 16, finish_reason="length",
                                    top_logprobs=[{i: -0.1 * i for i in range(5)} for _ in range(16)])

    with tempfile.TemporaryDirectory() as tmp, HistoryWriter(Path(tmp) / "h.jsonl") as writer:
        t0 = time.process_time()
        await drive_run(Instant(), spec, writer)  # type: ignore[arg-type]
        return (time.process_time() - t0) / n * 1000


LAYERS = {"aiohttp": aiohttp_layer, "httpx": httpx_layer, "client": client_layer, "driver": driver_layer}


def main(argv: list[str] | None = None) -> int:
    from bench.bench_driver import _cores, _pin
    from bench.fake_server import FakeServer

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    cores = _cores()
    if cores:
        _pin(0, cores[1])
    results: dict[str, list[float]] = {}
    with FakeServer.spawn() as server:
        if cores:
            _pin(server.proc.pid, cores[0])  # type: ignore[union-attr]
        for _ in range(args.repeats):
            for name, layer in LAYERS.items():
                results.setdefault(name, []).append(asyncio.run(layer(server.url, args.requests, args.concurrency)))
    print(f"CPU ms per request, c={args.concurrency}, {args.requests} requests, median of {args.repeats}")
    print("| layer | CPU ms / request | all runs |\n|---|---|---|")
    for name, values in results.items():
        print(f"| {name} | {statistics.median(values):.3f} | {', '.join(f'{v:.3f}' for v in values)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
