"""A fast OpenAI-compatible fake server with zero model cost, to measure what the *client* costs.

Speaks what the harness and `vllm bench serve` send: `/v1/completions` and `/v1/chat/completions`,
streamed (SSE) and not, and answers in the shapes vLLM 0.32 returns with `return_token_ids`,
`return_tokens_as_token_ids` and logprobs: `token_ids`, `prompt_token_ids`, logprob entries keyed
"token_id:N", `usage.prompt_tokens_details.cached_tokens`; plus `/v1/models`, `/metrics`
(prefix-cache counters) and `POST /reset_prefix_cache`.

Nothing is computed: a prompt is split on whitespace into "tokens" (each harness pool word is one
id, as on the embedded model), the output is a deterministic function of the prompt (greedy runs
repeat exactly; a counterfactual re-run of an unchanged conversation gets the same tokens), and a
real block-level prefix cache per (model, cache_salt) domain reports honest cached-token counts,
so a history driven against this server passes every check.

    python -m bench.fake_server --port 8100 [--tokens N] [--block-size 32]

prints `READY http://127.0.0.1:PORT` once it listens. `FakeServer` starts one in a child process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zlib
from typing import Any

from aiohttp import web

from harness.scenario.words import word_pool

MODEL = "fake-model"
_POOL = word_pool()
_NPOOL = len(_POOL)
_BASE = 100  # pool word i is token id _BASE + i
_WORD_ID = {w: _BASE + i for i, w in enumerate(_POOL)}
_ROLE_ID = {"system": 2, "user": 3, "assistant": 4}
_BOS, _END, _GEN = 1, 5, 6
_MASK = (1 << 64) - 1
_TOKEN_KEY = [f"token_id:{_BASE + i}" for i in range(_NPOOL)]
_TEXT = [" " + w for w in _POOL]
_TEXT_BYTES = [list(t.encode()) for t in _TEXT]
_KEY_BYTES = [list(k.encode()) for k in _TOKEN_KEY]
_DUMPS = json.JSONEncoder(separators=(",", ":")).encode


def tokenize(text: str) -> list[int]:
    """Whitespace "tokenizer": a pool word is one id; other words hash into a disjoint range."""
    ids = []
    for w in text.split():
        i = _WORD_ID.get(w)
        ids.append(i if i is not None else _BASE + _NPOOL + zlib.crc32(w.encode()) % 50000)
    return ids


def chat_ids(messages: list[dict[str, Any]]) -> list[int]:
    ids = [_BOS]
    for m in messages:
        content = m.get("content") or ""
        if isinstance(content, list):  # OpenAI content parts
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        ids.append(_ROLE_ID.get(m.get("role", "user"), 3))
        ids.extend(tokenize(content))
        ids.append(_END)
    ids.append(_GEN)
    return ids


def generate(ids: list[int], n: int, seed: int | None) -> list[int]:
    """n output tokens, a deterministic function of the prompt (and the seed, when sampling)."""
    x = hash((tuple(ids[-16:]), len(ids), seed)) & _MASK
    out = []
    for _ in range(n):
        x = (x * 6364136223846793005 + 1442695040888963407) & _MASK
        out.append(_BASE + (x >> 33) % _NPOOL)
    return out


class PrefixCache:
    """Block-level prefix cache: chained block hashes per (model, salt) domain, like vLLM's."""

    def __init__(self, block: int, max_blocks: int = 2_000_000) -> None:
        self.block, self.max_blocks = block, max_blocks
        self.blocks: dict[int, None] = {}
        self.queries = self.hits = 0

    def _hashes(self, domain: tuple[str, str | None], ids: list[int], start: int = 0) -> list[int]:
        b = self.block
        h = hash(domain)
        out = []
        for k in range(len(ids) // b):
            h = hash((h, tuple(ids[k * b:(k + 1) * b])))
            if k >= start:
                out.append(h)
        return out

    def lookup_and_insert(self, domain: tuple[str, str | None], prompt: list[int]) -> int:
        """Cached tokens for this prompt (never the whole prompt), then cache its full blocks."""
        hashes = self._hashes(domain, prompt)
        hit = 0
        for h in hashes:
            if h not in self.blocks:
                break
            hit += 1
        cached = min(hit * self.block, (len(prompt) - 1) // self.block * self.block) if prompt else 0
        self.queries += len(prompt)
        self.hits += cached
        self._insert(hashes)
        return cached

    def insert_sequence(self, domain: tuple[str, str | None], seq: list[int], after: int) -> None:
        """Cache the full blocks of a finished sequence (prompt + generated, less the last token)."""
        self._insert(self._hashes(domain, seq, start=after // self.block))

    def _insert(self, hashes: list[int]) -> None:
        blocks = self.blocks
        for h in hashes:
            blocks[h] = None
        if len(blocks) > self.max_blocks:  # evict the older half; fewer hits is always honest
            for h in list(blocks)[: len(blocks) // 2]:
                del blocks[h]

    def reset(self) -> None:
        self.blocks.clear()


class FakeServer:
    """The aiohttp application; also starts itself in a child process (`FakeServer.spawn`)."""

    def __init__(self, tokens: int | None = None, block_size: int = 32, models: tuple[str, ...] = (MODEL,),
                 service_s: float = 0.0) -> None:
        self.tokens = tokens
        self.models = models
        self.service_s = service_s
        """An engine step's duration: each generation is answered this long after it arrives, so that
        requests sent together are in flight together, as on a real server (0: at once)."""
        self.cache = PrefixCache(block_size)
        self.counter = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_post("/reset_prefix_cache", self.reset)
        app.router.add_get("/health", self.health)
        return app

    # --- endpoints ----------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="")

    async def list_models(self, request: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake", "root": m, "parent": None,
                 "max_model_len": MAX_TOKENS} for m in self.models]
        return web.json_response({"object": "list", "data": data})

    async def metrics(self, request: web.Request) -> web.Response:
        c = self.cache
        return web.Response(text=(
            "# TYPE vllm:prefix_cache_queries_total counter\n"
            f'vllm:prefix_cache_queries_total{{model_name="{self.models[0]}"}} {float(c.queries)}\n'
            "# TYPE vllm:prefix_cache_hits_total counter\n"
            f'vllm:prefix_cache_hits_total{{model_name="{self.models[0]}"}} {float(c.hits)}\n'))

    async def reset(self, request: web.Request) -> web.Response:
        self.cache.reset()
        return web.Response(text="")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, chat=False)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, chat=True)

    # --- the work -----------------------------------------------------------------------------

    async def _serve(self, request: web.Request, chat: bool) -> web.StreamResponse:
        body = json.loads(await request.read())
        model = body.get("model")
        if model not in self.models:
            return web.json_response({"error": {"message": f"The model `{model}` does not exist.",
                                                "type": "NotFoundError", "param": "model", "code": 404}},
                                     status=404)
        try:
            ids, top, max_tokens = _parse(body, chat)
        except (TypeError, ValueError, AttributeError, KeyError) as e:
            # a validating server answers a malformed field with 400, never 500
            return web.json_response({"error": {"message": f"invalid request: {e}", "type": "BadRequestError",
                                                "param": None, "code": 400}}, status=400)
        n = min(max_tokens, self.tokens) if self.tokens else max_tokens
        if self.service_s:
            await asyncio.sleep(self.service_s)  # the engine step: simulated service time, not synchronisation
        domain = (model, body.get("cache_salt"))
        cached = self.cache.lookup_and_insert(domain, ids)
        seed = body.get("seed") if float(body.get("temperature") or 0.0) > 0 else None
        out = generate(ids, n, seed)
        self.cache.insert_sequence(domain, ids + out[:-1], len(ids))
        self.counter += 1
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{self.counter:016x}"
        ctx = _Ctx(rid, model, chat, ids, out, top, cached, "length" if n == max_tokens else "stop",
                   bool(body.get("return_token_ids")), bool(body.get("return_tokens_as_token_ids")))
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return await self._stream(request, ctx, include_usage)
        return web.Response(body=_DUMPS(ctx.full()).encode(), content_type="application/json")

    async def _stream(self, request: web.Request, ctx: _Ctx, include_usage: bool) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        for chunk in ctx.chunks(include_usage):
            await resp.write(b"data: " + _DUMPS(chunk).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    # --- process management -------------------------------------------------------------------

    @staticmethod
    def spawn(port: int | None = None, tokens: int | None = None, block_size: int = 32,
              timeout_s: float = 30.0) -> SpawnedServer:
        return SpawnedServer(port or free_port(), tokens, block_size, timeout_s)


MAX_TOKENS = 4096
"""The fake's context length in generated tokens: larger requests are refused like a real server's."""


def _parse(body: dict[str, Any], chat: bool) -> tuple[list[int], int | None, int]:
    """The prompt's ids, top logprobs and max_tokens of a request; raises on a malformed field."""
    if chat:
        ids = chat_ids(body.get("messages") or [])
        top = int(body.get("top_logprobs") or 0) if body.get("logprobs") else None
    else:
        prompt = body.get("prompt") or ""
        if not isinstance(prompt, (str, list)):
            raise TypeError(f"prompt must be a string or a list, not {type(prompt).__name__}")
        ids = tokenize(prompt if isinstance(prompt, str) else " ".join(map(str, prompt)))
        raw = body.get("logprobs")
        top = int(raw) if raw is not None else None
    max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
    if not 0 < max_tokens <= MAX_TOKENS or (top is not None and not 0 <= top <= 20):
        raise ValueError("max_tokens or logprobs out of range")
    salt = body.get("cache_salt")
    if salt is not None and not isinstance(salt, str):
        raise TypeError("cache_salt must be a string")
    float(body.get("temperature") or 0.0)
    if not isinstance(body.get("stream_options") or {}, dict):
        raise TypeError("stream_options must be an object")
    return ids, top, max_tokens


class _Ctx:
    """One request's answer, rendered as vLLM renders it."""

    created = int(time.time())

    def __init__(self, rid: str, model: str, chat: bool, ids: list[int], out: list[int], top: int | None,
                 cached: int, finish: str, return_ids: bool, ids_as_tokens: bool) -> None:
        self.rid, self.model, self.chat, self.ids, self.out, self.top = rid, model, chat, ids, out, top
        self.cached, self.finish, self.return_ids, self.ids_as_tokens = cached, finish, return_ids, ids_as_tokens

    def _key(self, t: int) -> str:
        return _TOKEN_KEY[t - _BASE] if self.ids_as_tokens else _TEXT[t - _BASE]

    def _tops(self, t: int) -> list[tuple[int, float]]:
        k = self.top or 0
        alts = [(t, -0.05)]
        for j in range(1, k):
            alts.append((_BASE + (t - _BASE + 37 * j) % _NPOOL, -3.0 - 0.5 * j))
        return alts

    def usage(self) -> dict[str, Any]:
        n = len(self.out)
        return {"prompt_tokens": len(self.ids), "total_tokens": len(self.ids) + n, "completion_tokens": n,
                "prompt_tokens_details": {"cached_tokens": self.cached}}

    def _completion_logprobs(self, tokens: list[int], offset: int) -> dict[str, Any] | None:
        if self.top is None:
            return None
        offsets, pos = [], offset
        for t in tokens:
            offsets.append(pos)
            pos += len(_TEXT[t - _BASE])
        return {"text_offset": offsets, "token_logprobs": [-0.05] * len(tokens),
                "tokens": [self._key(t) for t in tokens],
                "top_logprobs": [{self._key(a): lp for a, lp in self._tops(t)} for t in tokens]}

    def _chat_logprobs(self, tokens: list[int]) -> dict[str, Any] | None:
        if self.top is None:
            return None
        return {"content": [
            {"token": self._key(t), "logprob": -0.05, "bytes": _TEXT_BYTES[t - _BASE],
             "top_logprobs": [{"token": self._key(a), "logprob": lp, "bytes": _KEY_BYTES[a - _BASE]}
                              for a, lp in self._tops(t)]}
            for t in tokens]}

    def full(self) -> dict[str, Any]:
        text = "".join(_TEXT[t - _BASE] for t in self.out)
        head = {"id": self.rid, "object": "chat.completion" if self.chat else "text_completion",
                "created": self.created, "model": self.model}
        if self.chat:
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                      "logprobs": self._chat_logprobs(self.out), "finish_reason": self.finish,
                                      "stop_reason": None}
        else:
            choice = {"index": 0, "text": text, "logprobs": self._completion_logprobs(self.out, 0),
                      "finish_reason": self.finish, "stop_reason": None, "prompt_logprobs": None}
        if self.return_ids:
            choice["token_ids"] = self.out
            if not self.chat:
                choice["prompt_token_ids"] = self.ids
        resp = {**head, "choices": [choice], "usage": self.usage()}
        if self.chat and self.return_ids:
            resp["prompt_token_ids"] = self.ids
        return resp

    def chunks(self, include_usage: bool) -> list[dict[str, Any]]:
        head = {"id": self.rid, "object": "chat.completion.chunk" if self.chat else "text_completion",
                "created": self.created, "model": self.model}
        chunks = []
        if self.chat:
            first = {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                          "logprobs": None, "finish_reason": None}]}
            if self.return_ids:
                first["prompt_token_ids"] = self.ids
            chunks.append(first)
        offset = 0
        last = len(self.out) - 1
        for i, t in enumerate(self.out):
            text = _TEXT[t - _BASE]
            finish = self.finish if i == last else None
            if self.chat:
                choice: dict[str, Any] = {"index": 0, "delta": {"content": text},
                                          "logprobs": self._chat_logprobs([t]), "finish_reason": finish}
            else:
                choice = {"index": 0, "text": text, "logprobs": self._completion_logprobs([t], offset),
                          "finish_reason": finish, "stop_reason": None}
                if self.return_ids:
                    choice["prompt_token_ids"] = self.ids if i == 0 else None
            if self.return_ids:
                choice["token_ids"] = [t]
            offset += len(text)
            chunks.append({**head, "choices": [choice]})
        if include_usage:
            chunks.append({**head, "choices": [], "usage": self.usage()})
        return chunks


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SpawnedServer:
    """A fake server in a child process; a context manager that stops it on exit."""

    def __init__(self, port: int, tokens: int | None, block_size: int, timeout_s: float) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        args = [sys.executable, "-m", "bench.fake_server", "--port", str(port), "--block-size", str(block_size)]
        if tokens:
            args += ["--tokens", str(tokens)]
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        # not a pipe: a chatty server must never block on it; kept open to report a failed start
        self._log = tempfile.TemporaryFile()  # noqa: SIM115  (lives as long as this object)
        self.proc = subprocess.Popen(args, cwd=root, stdout=subprocess.DEVNULL, stderr=self._log)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    self._log.seek(0)
                    err = self._log.read().decode(errors="replace")
                    raise RuntimeError(f"fake server did not start: {err[-2000:]}") from None
                time.sleep(0.05)

    def cpu_s(self) -> float | None:
        """User+system CPU seconds the server process has used so far (None without psutil)."""
        try:
            import psutil
        except ImportError:
            return None
        t = psutil.Process(self.proc.pid).cpu_times()
        return t.user + t.system

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> SpawnedServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8100)
    ap.add_argument("--tokens", type=int, default=None, help="tokens per response (default: max_tokens)")
    ap.add_argument("--block-size", type=int, default=32)
    ap.add_argument("--model", action="append", default=None, help="served model name(s)")
    args = ap.parse_args(argv)
    server = FakeServer(args.tokens, args.block_size, tuple(args.model or [MODEL]))

    async def run() -> None:
        runner = web.AppRunner(server.app(), access_log=None, handle_signals=True)
        await runner.setup()
        await web.TCPSite(runner, args.host, args.port, backlog=4096).start()
        print(f"READY http://{args.host}:{args.port}", flush=True)
        await asyncio.Event().wait()

    try:
        import uvloop

        go = uvloop.run
    except ImportError:
        go = asyncio.run
    with contextlib.suppress(KeyboardInterrupt, SystemExit):
        go(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
