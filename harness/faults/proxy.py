"""A fault-injecting reverse proxy for any OpenAI-compatible server (the harness's nemesis).

`FaultProxy` forwards every path to the target and, on POST /v1/completions and
/v1/chat/completions, injects one named fault from `harness.faults.catalog` with probability
`rate` (seeded). It exists so that each harness check can be shown to FAIL on a server that
really breaks isolation, and to PASS under benign perturbations.

With no fault the proxy is transparent: the request bytes go upstream unchanged and the response
bytes come back unchanged, streams are relayed chunk by chunk without buffering. Faults that alter
a response buffer the upstream response (a stream is collected whole), edit the parsed JSON and
re-emit it (as SSE for a stream). Errors are passed through: an upstream status and body as they
came, a broken upstream stream as a broken downstream stream (the connection is closed without
the final `data: [DONE]`), an unreachable upstream as 502, a silent one as 504 after `timeout_s`.

The proxy runs its own event loop in a background thread, so sync code, async code in another
loop, and tests can all use it the same way:

    with FaultProxy("http://127.0.0.1:8000", fault="flip", rate=0.5, seed=1) as proxy:
        ...  # send traffic to proxy.url
        print(len(proxy.injections), proxy.injections[0].seq)

Identity comes from the driver's headers `X-Harness-User`, `X-Harness-Tenant` and `X-Harness-Op`;
without them a request's user is a hash of its prompt and its tenant its cache salt or user.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from harness.faults import catalog
from harness.client.http import _by_id, _entries_by_id, token_id_of

GENERATION_PATHS: dict[str, str] = {"/v1/completions": "completions", "/v1/chat/completions": "chat"}
USER_HEADER = "X-Harness-User"
TENANT_HEADER = "X-Harness-Tenant"
OP_HEADER = "X-Harness-Op"
DEFAULT_TIMEOUT_S = 120.0
MERGED_SALT = "harness-fault-merged-salt"

_HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers",
        "transfer-encoding", "upgrade", "host", "content-length", "content-encoding", "accept-encoding",
    )
)
_SSE_TYPE = "text/event-stream"


# --- injection records ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Injection:
    """One injected fault: which request (n-th generation request, op id, identity) and what changed."""

    seq: int
    """1-based ordinal of the request among the generation requests this proxy has seen."""
    op: str | None
    user: str | None
    tenant: str | None
    fault: str
    detail: str
    path: str
    at: float = field(default_factory=time.time)


class InjectionLog:
    """A thread-safe, append-only list of `Injection`s (the proxy thread writes, callers read)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[Injection] = []

    def append(self, item: Injection) -> None:
        with self._lock:
            self._items.append(item)

    def snapshot(self) -> list[Injection]:
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __iter__(self) -> Iterator[Injection]:
        return iter(self.snapshot())

    def __getitem__(self, i: int) -> Injection:
        with self._lock:
            return self._items[i]

    def __bool__(self) -> bool:
        return len(self) > 0

    def __repr__(self) -> str:
        return f"InjectionLog({self.snapshot()!r})"


# --- one proxied request --------------------------------------------------------------------------


@dataclass
class _Call:
    """A downstream request with what the faults need to know about it."""

    request: web.Request
    raw: bytes
    endpoint: str | None = None
    body: dict[str, Any] | None = None
    body_changed: bool = False
    seq: int = 0
    user: str | None = None
    tenant: str | None = None
    op: str | None = None

    @property
    def stream(self) -> bool:
        return bool(self.body and self.body.get("stream"))

    @property
    def include_usage(self) -> bool:
        opts = (self.body or {}).get("stream_options") or {}
        return bool(isinstance(opts, dict) and opts.get("include_usage"))

    @property
    def model(self) -> str | None:
        m = (self.body or {}).get("model")
        return m if isinstance(m, str) else None

    def data(self) -> bytes:
        """The bytes to send upstream: the original ones unless a fault edited the body."""
        return json.dumps(self.body).encode() if self.body_changed else self.raw


@dataclass
class _Captured:
    """A whole upstream response, read into memory so a fault can inspect and edit it."""

    status: int
    reason: str | None
    headers: list[tuple[str, str]]
    raw: bytes
    sse: bool
    broken: str | None = None
    """Why the upstream body ended early (the downstream copy must end early too)."""
    payloads: list[dict[str, Any]] | None = None
    """Parsed JSON: [body] for a plain response, the data chunks for a stream; None if unparseable."""
    done: bool = False
    """A stream ended with `data: [DONE]`."""
    modified: bool = False

    @property
    def usable(self) -> bool:
        """A complete, successful, parsed response (the only kind faults edit or reuse)."""
        return self.status == 200 and self.payloads is not None and self.broken is None and (self.done or not self.sse)


def _parse_captured(cap: _Captured) -> None:
    if cap.sse:
        chunks: list[dict[str, Any]] = []
        text = cap.raw.decode("utf-8", errors="replace").replace("\r\n", "\n")
        for block in text.split("\n\n"):
            data = "\n".join(line[5:].removeprefix(" ") for line in block.split("\n") if line.startswith("data:"))
            if not data:
                continue
            if data.strip() == "[DONE]":
                cap.done = True
                continue
            try:
                obj = json.loads(data)
            except ValueError:
                return
            if not isinstance(obj, dict):
                return
            chunks.append(obj)
        cap.payloads = chunks
    else:
        try:
            obj = json.loads(cap.raw)
        except ValueError:
            return
        if isinstance(obj, dict):
            cap.payloads = [obj]


def _render(cap: _Captured) -> bytes:
    """Serialise edited payloads back to the wire form of `cap`."""
    assert cap.payloads is not None
    if not cap.sse:
        return json.dumps(cap.payloads[0]).encode()
    out = [f"data: {json.dumps(p)}\n\n" for p in cap.payloads]
    if cap.done:
        out.append("data: [DONE]\n\n")
    return "".join(out).encode()


# --- response shapes: tokens across endpoints and streaming ---------------------------------------


@dataclass
class _Slot:
    """Output token k lives in `choice` (of one payload) at index j of its token lists."""

    choice: dict[str, Any]
    j: int


class _Tokens:
    """The output tokens of choice 0 of a response, across its payloads, with consistent edits.

    Completions keep a token in `token_ids[j]`, `logprobs.tokens[j]` ("token_id:N"),
    `logprobs.token_logprobs[j]` and `logprobs.top_logprobs[j]` ({"token_id:N": lp}); chat in
    `token_ids[j]` and `logprobs.content[j]` ({token, logprob, bytes, top_logprobs: [...]}).
    A server that names tokens by their text (llama.cpp; vLLM without
    `return_tokens_as_token_ids`) uses the same places with the token's text as the key and no
    `token_ids`: `by_text()` says so, and `key` / `top_keys` / `set_key` read and edit it.
    """

    def __init__(self, payloads: list[dict[str, Any]], endpoint: str) -> None:
        self.endpoint = endpoint
        self.slots: list[_Slot] = []
        self.choices: list[dict[str, Any]] = []
        for p in payloads:
            for c in p.get("choices") or []:
                if not isinstance(c, dict) or c.get("index", 0) != 0:
                    continue
                self.choices.append(c)
                self.slots.extend(_Slot(c, j) for j in range(self._count(c)))

    def _lp(self, c: dict[str, Any]) -> dict[str, Any]:
        lp = c.get("logprobs")
        return lp if isinstance(lp, dict) else {}

    def _count(self, c: dict[str, Any]) -> int:
        if isinstance(c.get("token_ids"), list):
            return len(c["token_ids"])
        lp = self._lp(c)
        return len(lp.get("tokens") or []) if self.endpoint == "completions" else len(lp.get("content") or [])

    def __len__(self) -> int:
        return len(self.slots)

    def id(self, k: int) -> int | None:
        s = self.slots[k]
        ids = s.choice.get("token_ids")
        if isinstance(ids, list) and s.j < len(ids):
            return int(ids[s.j])
        return token_id_of(self.key(k))

    def ids(self) -> list[int | None]:
        return [self.id(k) for k in range(len(self.slots))]

    def _top_raw(self, k: int) -> Any:
        """Position k's top logprobs as the response holds them: a dict (completions) or a list of
        entries (chat); empty when missing or of another type."""
        s = self.slots[k]
        lp = self._lp(s.choice)
        if self.endpoint == "completions":
            tops = lp.get("top_logprobs") or []
            return tops[s.j] if s.j < len(tops) and isinstance(tops[s.j], dict) else {}
        content = lp.get("content") or []
        return content[s.j].get("top_logprobs") or [] if s.j < len(content) else []

    def top(self, k: int) -> dict[int, float]:
        """Position k's top logprobs by token id, read as the client reads them."""
        raw = self._top_raw(k)
        return _by_id(raw) if self.endpoint == "completions" else _entries_by_id(raw)

    def key(self, k: int) -> str | None:
        """How the response names output token k in its logprobs ("token_id:N" or the token's text)."""
        s = self.slots[k]
        lp = self._lp(s.choice)
        if self.endpoint == "completions":
            toks = lp.get("tokens") or []
            key = toks[s.j] if s.j < len(toks) else None
        else:
            content = lp.get("content") or []
            entry = content[s.j] if s.j < len(content) else None
            key = entry.get("token") if isinstance(entry, dict) else None
        return key if isinstance(key, str) else None

    def keys(self) -> list[str | None]:
        return [self.key(k) for k in range(len(self.slots))]

    def top_keys(self, k: int) -> dict[str, float]:
        """Position k's top logprobs as the response keys them."""
        raw = self._top_raw(k)
        if self.endpoint == "completions":
            return {key: float(v) for key, v in raw.items() if isinstance(key, str) and _finite(v)}
        return {e["token"]: float(e["logprob"]) for e in raw
                if isinstance(e, dict) and isinstance(e.get("token"), str) and _finite(e.get("logprob"))}

    def by_text(self) -> bool:
        """Every output token is named by its text only: no `token_ids`, no "token_id:N" keys."""
        if not self.slots or any(isinstance(c.get("token_ids"), list) for c in self.choices):
            return False
        return all(key is not None and token_id_of(key) is None for key in self.keys())

    def set_token(self, k: int, new_id: int, logprob: float) -> None:
        """Replace token k everywhere it is named, adding it to that position's top logprobs."""
        self.set_key(k, f"token_id:{new_id}", logprob, new_id)

    def set_key(self, k: int, key: str, logprob: float, new_id: int | None = None) -> None:
        """Name token k `key` (and id `new_id` where the response lists ids) with logprob `logprob`,
        in the tokens list, token_logprobs and top logprobs; later text offsets move by the change
        in length. A text key is the token's text, so it also sets the chat entry's bytes where the
        server sends them (llama.cpp sends null)."""
        s = self.slots[k]
        by_text = new_id is None
        ids = s.choice.get("token_ids")
        if new_id is not None and isinstance(ids, list) and s.j < len(ids):
            ids[s.j] = new_id
        lp = self._lp(s.choice)
        if self.endpoint == "completions":
            toks, lps, tops = lp.get("tokens"), lp.get("token_logprobs"), lp.get("top_logprobs")
            if isinstance(toks, list) and s.j < len(toks):
                old_key = toks[s.j]
                toks[s.j] = key
                if isinstance(old_key, str):
                    self._shift_offsets(k, len(key) - len(old_key))
            if isinstance(lps, list) and s.j < len(lps):
                lps[s.j] = logprob
            if isinstance(tops, list) and s.j < len(tops) and isinstance(tops[s.j], dict):
                tops[s.j][key] = logprob
        else:
            content = lp.get("content")
            if isinstance(content, list) and s.j < len(content):
                entry = content[s.j]
                entry["token"] = key
                entry["logprob"] = logprob
                as_bytes = list(key.encode())
                if by_text:
                    as_bytes = as_bytes if isinstance(entry.get("bytes"), list) else entry.get("bytes")
                    entry["bytes"] = as_bytes
                tops = entry.get("top_logprobs")
                if isinstance(tops, list):
                    tops.append({"token": key, "logprob": logprob, "bytes": as_bytes})

    def _shift_offsets(self, k: int, delta: int) -> None:
        """Completions `text_offset` counts characters of the token strings (vLLM: of "token_id:N";
        llama.cpp: of the text, from the start of the prompt), so a token of another length moves
        every later offset."""
        if delta == 0:
            return
        for s in self.slots[k + 1:]:
            offs = self._lp(s.choice).get("text_offset")
            if isinstance(offs, list) and s.j < len(offs) and isinstance(offs[s.j], int):
                offs[s.j] += delta

    def set_bytes(self, k: int, piece: str) -> None:
        """Chat logprob entries carry the token's text as UTF-8 bytes; keep them in step."""
        s = self.slots[k]
        content = self._lp(s.choice).get("content")
        if self.endpoint == "chat" and isinstance(content, list) and s.j < len(content):
            content[s.j]["bytes"] = list(piece.encode())

    def jitter(self, rng: random.Random, scale: float) -> int:
        """Add ~scale noise to every logprob (one draw per token per position); return how many moved."""
        moved = 0
        for s in self.slots:
            draws: dict[str, float] = {}

            def d(key: str) -> float:
                if key not in draws:
                    draws[key] = rng.choice((-1.0, 1.0)) * rng.uniform(0.5, 1.5) * scale
                return draws[key]

            lp = self._lp(s.choice)
            if self.endpoint == "completions":
                toks, lps, tops = lp.get("tokens") or [], lp.get("token_logprobs"), lp.get("top_logprobs")
                key = toks[s.j] if s.j < len(toks) else ""
                if isinstance(lps, list) and s.j < len(lps) and _finite(lps[s.j]):
                    lps[s.j] = _nudge(lps[s.j], d(key))
                    moved += 1
                if isinstance(tops, list) and s.j < len(tops) and isinstance(tops[s.j], dict):
                    for tk, v in tops[s.j].items():
                        if _finite(v):
                            tops[s.j][tk] = _nudge(v, d(tk))
                            moved += 1
            else:
                content = lp.get("content") or []
                if s.j >= len(content):
                    continue
                entry = content[s.j]
                if _finite(entry.get("logprob")):
                    entry["logprob"] = _nudge(entry["logprob"], d(entry.get("token", "")))
                    moved += 1
                for e in entry.get("top_logprobs") or []:
                    if _finite(e.get("logprob")):
                        e["logprob"] = _nudge(e["logprob"], d(e.get("token", "")))
                        moved += 1
        return moved

    def _text_holder(self, c: dict[str, Any]) -> tuple[dict[str, Any], str] | None:
        if self.endpoint == "completions":
            return (c, "text") if isinstance(c.get("text"), str) else None
        part = c.get("message") if isinstance(c.get("message"), dict) else c.get("delta")
        if isinstance(part, dict) and isinstance(part.get("content"), str):
            return part, "content"
        return None

    def text(self) -> str:
        return "".join(h[0][h[1]] for c in self.choices if (h := self._text_holder(c)))

    def replace_text(self, offset: int, old: str, new: str) -> bool:
        """Splice `new` over `old` at `offset` of the concatenated output text (within one payload)."""
        pos = 0
        for c in self.choices:
            h = self._text_holder(c)
            if h is None:
                continue
            holder, key = h
            t = holder[key]
            if pos <= offset and offset + len(old) <= pos + len(t):
                local = offset - pos
                if t[local:local + len(old)] != old:
                    return False
                holder[key] = t[:local] + new + t[local + len(old):]
                return True
            pos += len(t)
        return False


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _nudge(lp: float, d: float) -> float:
    """Move a logprob by d, keeping it a valid logprob (<= 0)."""
    v = float(lp) + d
    return v if v <= 0.0 else float(lp) - abs(d)


def _prompt_token_ids(payloads: list[dict[str, Any]]) -> list[int]:
    for p in payloads:
        if isinstance(p.get("prompt_token_ids"), list):
            return list(p["prompt_token_ids"])
        for c in p.get("choices") or []:
            if isinstance(c, dict) and isinstance(c.get("prompt_token_ids"), list):
                return list(c["prompt_token_ids"])
    return []


# --- stream <-> body conversion (swap and stale hand a response to a request of the other form) ---


def _as_body(payloads: list[dict[str, Any]], sse: bool, endpoint: str) -> dict[str, Any]:
    """A non-streaming response body equivalent to the given response."""
    if not sse:
        return copy.deepcopy(payloads[0])
    chat = endpoint == "chat"
    first = payloads[0] if payloads else {}
    body: dict[str, Any] = {k: first[k] for k in ("id", "created", "model", "system_fingerprint") if k in first}
    body["object"] = "chat.completion" if chat else "text_completion"
    choices: dict[int, dict[str, Any]] = {}
    for p in payloads:
        if p.get("prompt_token_ids") is not None:
            body["prompt_token_ids"] = p["prompt_token_ids"]
        if p.get("usage"):
            body["usage"] = p["usage"]
        for c in p.get("choices") or []:
            idx = c.get("index", 0)
            if idx not in choices:
                choices[idx] = (
                    {"index": idx, "message": {"role": "assistant", "content": ""}, "logprobs": None,
                     "finish_reason": None, "stop_reason": None, "token_ids": None}
                    if chat
                    else {"index": idx, "text": "", "logprobs": None, "finish_reason": None, "stop_reason": None,
                          "token_ids": None, "prompt_token_ids": None}
                )
            acc = choices[idx]
            if chat:
                acc["message"]["content"] += (c.get("delta") or {}).get("content") or ""
            else:
                acc["text"] += c.get("text") or ""
                if c.get("prompt_token_ids") is not None:
                    acc["prompt_token_ids"] = c["prompt_token_ids"]
            if c.get("token_ids") is not None:
                acc["token_ids"] = (acc["token_ids"] or []) + list(c["token_ids"])
            lp = c.get("logprobs")
            if isinstance(lp, dict):
                if chat:
                    acc["logprobs"] = acc["logprobs"] or {"content": []}
                    acc["logprobs"]["content"] += lp.get("content") or []
                else:
                    acc["logprobs"] = acc["logprobs"] or {"text_offset": [], "token_logprobs": [], "tokens": [],
                                                          "top_logprobs": []}
                    for key in ("text_offset", "token_logprobs", "tokens", "top_logprobs"):
                        acc["logprobs"][key] += lp.get(key) or []
            for key in ("finish_reason", "stop_reason"):
                if c.get(key) is not None:
                    acc[key] = c[key]
    body["choices"] = [choices[i] for i in sorted(choices)]
    return body


def _as_chunks(body: dict[str, Any], endpoint: str, include_usage: bool) -> list[dict[str, Any]]:
    """Stream chunks equivalent to a non-streaming body (one content chunk per choice)."""
    chat = endpoint == "chat"
    head = {k: body[k] for k in ("id", "created", "model") if k in body}
    head["object"] = "chat.completion.chunk" if chat else "text_completion"
    chunks: list[dict[str, Any]] = []
    if chat:
        role = {**head, "choices": [{"index": c.get("index", 0), "delta": {"role": "assistant", "content": ""},
                                     "logprobs": None, "finish_reason": None} for c in body.get("choices") or []]}
        if body.get("prompt_token_ids") is not None:
            role["prompt_token_ids"] = body["prompt_token_ids"]
        chunks.append(role)
    for c in body.get("choices") or []:
        out: dict[str, Any] = {"index": c.get("index", 0)}
        if chat:
            out["delta"] = {"content": (c.get("message") or {}).get("content") or ""}
        else:
            out["text"] = c.get("text") or ""
        out["logprobs"] = c.get("logprobs")
        out["finish_reason"] = c.get("finish_reason")
        out["stop_reason"] = c.get("stop_reason")
        if not chat:
            out["prompt_token_ids"] = c.get("prompt_token_ids")
        out["token_ids"] = c.get("token_ids")
        chunk = {**head, "choices": [out]}
        if not chat and body.get("prompt_token_ids") is not None:
            chunk["prompt_token_ids"] = body["prompt_token_ids"]
        chunks.append(chunk)
    if include_usage and body.get("usage"):
        chunks.append({**head, "choices": [], "usage": body["usage"]})
    return chunks


def _reshape(cap: _Captured, endpoint: str, call: _Call) -> _Captured:
    """`cap` in the wire form `call` asked for (stream or not)."""
    assert cap.payloads is not None
    if cap.sse == call.stream:
        return _Captured(cap.status, cap.reason, cap.headers, cap.raw, cap.sse, payloads=copy.deepcopy(cap.payloads),
                         done=cap.done, modified=cap.modified)
    body = _as_body(cap.payloads, cap.sse, endpoint)
    if call.stream:
        headers = [(k, v) for k, v in cap.headers if k.lower() != "content-type"]
        headers.append(("Content-Type", f"{_SSE_TYPE}; charset=utf-8"))
        return _Captured(cap.status, cap.reason, headers, b"", True, payloads=_as_chunks(body, endpoint, call.include_usage),
                         done=True, modified=True)
    headers = [(k, v) for k, v in cap.headers if k.lower() != "content-type"]
    headers.append(("Content-Type", "application/json"))
    return _Captured(cap.status, cap.reason, headers, b"", False, payloads=[body], modified=True)


# --- prompt helpers -------------------------------------------------------------------------------


def _prompt_text(body: dict[str, Any], endpoint: str) -> str | None:
    """The user-visible prompt: the completion prompt, or all chat message contents joined."""
    if endpoint == "completions":
        p = body.get("prompt")
        if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str):
            p = p[0]
        return p if isinstance(p, str) else None
    msgs = body.get("messages")
    if not isinstance(msgs, list):
        return None
    parts: list[str] = []
    for m in msgs:
        c = m.get("content") if isinstance(m, dict) else None
        if isinstance(c, str):
            parts.append(c)
        elif isinstance(c, list):
            parts.extend(x["text"] for x in c if isinstance(x, dict) and isinstance(x.get("text"), str))
    return "\n".join(parts)


def _prepend(body: dict[str, Any], endpoint: str, text: str) -> bool:
    """Put `text` in front of the prompt (chat: of the first message's content); False if impossible."""
    if endpoint == "completions":
        p = body.get("prompt")
        if isinstance(p, str):
            body["prompt"] = f"{text} {p}"
            return True
        if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str):
            body["prompt"] = [f"{text} {p[0]}"]
            return True
        return False
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs or not isinstance(msgs[0], dict):
        return False
    c = msgs[0].get("content")
    if isinstance(c, str):
        msgs[0]["content"] = f"{text} {c}"
        return True
    if isinstance(c, list):
        msgs[0]["content"] = [{"type": "text", "text": f"{text} "}, *c]
        return True
    return False


def _common_prefix(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


# --- coordination for the faults that pair requests ----------------------------------------------


@dataclass
class _SwapEntry:
    call: _Call
    cap: _Captured
    future: asyncio.Future[tuple[_Call, _Captured]]


class _SwapPool:
    """Pairs completed responses of different users on the same endpoint, within a window."""

    def __init__(self) -> None:
        self.waiting: list[_SwapEntry] = []

    async def exchange(self, call: _Call, cap: _Captured, window_s: float) -> tuple[_Call, _Captured] | None:
        for other in self.waiting:
            if other.call.user != call.user and other.call.endpoint == call.endpoint and not other.future.done():
                self.waiting.remove(other)
                other.future.set_result((call, cap))
                return other.call, other.cap
        entry = _SwapEntry(call, cap, asyncio.get_running_loop().create_future())
        self.waiting.append(entry)
        try:
            return await asyncio.wait_for(asyncio.shield(entry.future), window_s)
        except TimeoutError:
            if entry.future.done():
                return entry.future.result()
            self.waiting.remove(entry)
            return None


class _Reorderer:
    """Holds completed responses for a window, then releases the batch in shuffled order."""

    def __init__(self, rng: random.Random, window_s: float) -> None:
        self.rng = rng
        self.window_s = window_s
        self.pending: list[asyncio.Future[tuple[int, int]]] = []
        self.timer: asyncio.TimerHandle | None = None

    async def hold(self) -> tuple[int, int]:
        """Wait for release; returns (release rank, batch size)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[int, int]] = loop.create_future()
        self.pending.append(fut)
        if self.timer is None:
            self.timer = loop.call_later(self.window_s, self._flush)
        return await fut

    def _flush(self) -> None:
        batch, self.pending, self.timer = self.pending, [], None
        self.rng.shuffle(batch)
        for rank, fut in enumerate(batch):
            if not fut.done():
                fut.set_result((rank, len(batch)))


# --- the proxy --------------------------------------------------------------------------------------


class FaultProxy:
    """A reverse proxy in front of `target_url` that injects `fault` (None: transparent).

    Use as a context manager (sync or async) or call `start()` / `stop()`; `url` is where it
    listens, `injections` what it has done. `rate` is the probability that a request eligible for
    the fault gets it; `seed` seeds that choice and every other random choice of the faults.
    """

    def __init__(
        self,
        target_url: str,
        fault: str | None = None,
        rate: float = 1.0,
        seed: int = 0,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        swap_window_s: float = catalog.SWAP_WINDOW_S,
        on_injection: Callable[[Injection], None] | None = None,
    ) -> None:
        if fault is not None and fault.lower() == "none":
            fault = None
        if fault is not None:
            catalog.get(fault)
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must be in [0, 1], got {rate}")
        self.target_url = target_url.rstrip("/")
        self.fault = fault
        self.rate = rate
        self.seed = seed
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self.swap_window_s = swap_window_s
        self.on_injection = on_injection
        self.injections = InjectionLog()
        self.requests_seen = 0
        """Generation requests seen so far (the `seq` of the latest)."""
        self.url = ""
        self._rng = random.Random(seed)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._prompts: deque[tuple[str | None, str | None, str | None, str]] = deque(maxlen=catalog.HISTORY_SIZE)
        self._responses: deque[tuple[str, str | None, tuple[str, ...], _Captured, _Call]] = deque(
            maxlen=catalog.HISTORY_SIZE)
        self._swaps = _SwapPool()
        self._reorderer = _Reorderer(self._rng, catalog.REORDER_WINDOW_S)
        self._word_ids: dict[tuple[str | None, str], int | None] = {}
        self._text_ids: dict[tuple[str | None, str], int | None] = {}
        self._missing_tools: set[str] = set()
        """Helper endpoints (/tokenize, /extras/tokenize, ...) that answered 404: not asked again."""

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> str:
        """Start serving in a background thread; returns the URL once it accepts connections."""
        if self._thread is not None:
            return self.url
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._astart())
            except BaseException as exc:  # noqa: BLE001  (reported to the starting thread)
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._astop())
                loop.close()

        self._thread = threading.Thread(target=run, name=f"fault-proxy-{self.fault}", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]
        return self.url

    def stop(self) -> None:
        """Stop serving and join the thread (in-flight requests are cut off)."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        self._thread = None
        self._loop = None

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> FaultProxy:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)

    async def _astart(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            auto_decompress=True,
            timeout=self._timeout(),
        )
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        sockets = site._server.sockets if site._server is not None else ()  # type: ignore[union-attr]
        self.port = int(sockets[0].getsockname()[1])
        self.url = f"http://{self.host}:{self.port}"

    async def _astop(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in rest:
            t.cancel()
        if rest:
            await asyncio.wait(rest, timeout=5.0)

    def _timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=None, connect=min(10.0, self.timeout_s), sock_read=self.timeout_s)

    # --- bookkeeping ------------------------------------------------------------------------------

    def _draw(self) -> bool:
        """One seeded coin flip for an eligible request."""
        return self.rate >= 1.0 or self._rng.random() < self.rate

    def _record(self, call: _Call, detail: str, fault: str | None = None) -> None:
        inj = Injection(call.seq, call.op, call.user, call.tenant, fault or self.fault or "", detail,
                        call.request.path)
        self.injections.append(inj)
        if self.on_injection is not None:
            try:
                self.on_injection(inj)
            except Exception:  # noqa: BLE001  (a reporting callback must not break the proxy)
                pass

    def _classify(self, request: web.Request, raw: bytes) -> _Call:
        call = _Call(request, raw)
        endpoint = GENERATION_PATHS.get(request.path.rstrip("/"))
        if request.method != "POST" or endpoint is None:
            return call
        try:
            body = json.loads(raw)
        except ValueError:
            return call
        if not isinstance(body, dict):
            return call
        call.endpoint, call.body = endpoint, body
        self.requests_seen += 1
        call.seq = self.requests_seen
        text = _prompt_text(body, endpoint)
        ident = text if text is not None else json.dumps(body.get("prompt", body.get("messages")), sort_keys=True)
        call.user = request.headers.get(USER_HEADER) or "prompt:" + hashlib.sha1(ident.encode()).hexdigest()[:12]
        salt = body.get("cache_salt")
        call.tenant = request.headers.get(TENANT_HEADER) or (f"salt:{salt}" if isinstance(salt, str) else call.user)
        call.op = request.headers.get(OP_HEADER)
        return call

    # --- upstream ----------------------------------------------------------------------------------

    @staticmethod
    def _upstream_headers(request: web.Request) -> CIMultiDict[str]:
        return CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP)

    @staticmethod
    def _downstream_headers(up: aiohttp.ClientResponse) -> list[tuple[str, str]]:
        return [(k, v) for k, v in up.headers.items() if k.lower() not in _HOP_BY_HOP]

    def _send(self, call: _Call) -> Any:
        assert self._session is not None
        return self._session.request(
            call.request.method,
            self.target_url + call.request.path_qs,
            headers=self._upstream_headers(call.request),
            data=call.data() if call.raw or call.body_changed else None,
            allow_redirects=False,
        )

    @staticmethod
    def _error(status: int, message: str) -> web.Response:
        body = {"error": {"message": message, "type": "proxy_error", "code": status}, "object": "error"}
        return web.json_response(body, status=status)

    async def _passthrough(self, call: _Call) -> web.StreamResponse:
        """Relay the request and response; streams chunk by chunk, nothing buffered."""
        try:
            async with self._send(call) as up:
                headers = self._downstream_headers(up)
                if _SSE_TYPE not in up.headers.get("Content-Type", ""):
                    try:
                        body = await up.read()
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        return self._error(502, f"upstream body broke off: {type(exc).__name__}: {exc}")
                    return web.Response(status=up.status, reason=up.reason, headers=headers, body=body)
                resp = web.StreamResponse(status=up.status, reason=up.reason, headers=headers)
                await resp.prepare(call.request)
                chunks = up.content.iter_any()
                while True:
                    try:
                        chunk = await chunks.__anext__()
                    except StopAsyncIteration:
                        break
                    except (aiohttp.ClientError, TimeoutError):
                        _abort(call.request)  # upstream broke off: so does the downstream stream
                        return resp
                    try:
                        await resp.write(chunk)
                    except (ConnectionError, aiohttp.ClientConnectionResetError):
                        return resp  # the client left; leaving the block closes the upstream too
                await resp.write_eof()
                return resp
        except TimeoutError:
            return self._error(504, f"upstream {self.target_url} did not answer within {self.timeout_s:g} s")
        except aiohttp.ClientError as exc:
            return self._error(502, f"upstream {self.target_url} failed: {type(exc).__name__}: {exc}")

    async def _capture(self, call: _Call) -> _Captured | web.Response:
        """Read the whole upstream response; an error response of our own when there is none."""
        try:
            async with self._send(call) as up:
                sse = _SSE_TYPE in up.headers.get("Content-Type", "")
                cap = _Captured(up.status, up.reason, self._downstream_headers(up), b"", sse)
                parts: list[bytes] = []
                try:
                    async for chunk in up.content.iter_any():
                        parts.append(chunk)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    cap.broken = f"{type(exc).__name__}: {exc}"
                cap.raw = b"".join(parts)
        except TimeoutError:
            return self._error(504, f"upstream {self.target_url} did not answer within {self.timeout_s:g} s")
        except aiohttp.ClientError as exc:
            return self._error(502, f"upstream {self.target_url} failed: {type(exc).__name__}: {exc}")
        if cap.broken is not None and not cap.sse:
            return self._error(502, f"upstream body broke off: {cap.broken}")
        _parse_captured(cap)
        return cap

    async def _emit(self, call: _Call, cap: _Captured) -> web.StreamResponse:
        """Send a captured (maybe edited) response downstream; a broken one ends broken."""
        body = _render(cap) if cap.modified else cap.raw
        if not cap.sse:
            return web.Response(status=cap.status, reason=cap.reason, headers=cap.headers, body=body)
        resp = web.StreamResponse(status=cap.status, reason=cap.reason, headers=cap.headers)
        try:
            await resp.prepare(call.request)
            await resp.write(body)
            if cap.broken is not None:
                _abort(call.request)
                return resp
            await resp.write_eof()
        except (ConnectionError, aiohttp.ClientConnectionResetError):
            pass
        return resp

    async def _tool(self, path: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        """POST to a tokenizer helper endpoint (vLLM: /tokenize, /detokenize; llama.cpp:
        /extras/tokenize); None when unavailable (a 404 marks the path missing for good)."""
        assert self._session is not None
        if path in self._missing_tools:
            return None
        try:
            async with self._session.post(self.target_url + path, json=payload,
                                          timeout=aiohttp.ClientTimeout(total=min(10.0, self.timeout_s))) as r:
                if r.status == 404:
                    self._missing_tools.add(path)
                if r.status != 200:
                    return None
                out = await r.json(content_type=None)
                return out if isinstance(out, dict) else None
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None

    async def _detok(self, model: str | None, ids: list[int]) -> str | None:
        if not ids:
            return ""
        out = await self._tool("/detokenize", {"model": model, "tokens": ids})
        p = out.get("prompt") if out else None
        return p if isinstance(p, str) else None

    async def _word_token(self, model: str | None, word: str) -> int | None:
        """The single token id of ' word' on the target, if it is one token."""
        key = (model, word)
        if key not in self._word_ids:
            out = await self._tool("/tokenize", {"model": model, "prompt": f" {word}", "add_special_tokens": False})
            toks = out.get("tokens") if out else None
            self._word_ids[key] = int(toks[0]) if isinstance(toks, list) and len(toks) == 1 else None
        return self._word_ids[key]

    async def _text_token(self, model: str | None, text: str) -> int | None:
        """The id of `text` if the target tokenizes it as exactly one token (llama.cpp's
        /extras/tokenize, else vLLM's /tokenize); None if it is not one token or no tokenizer answers.
        The harness client recovers ids on text-keyed servers the same way, so a replacement that
        passes here maps back to one id there."""
        key = (model, text)
        if key not in self._text_ids:
            out = await self._tool("/extras/tokenize", {"model": model, "input": text})
            if out is None and "/extras/tokenize" in self._missing_tools:
                out = await self._tool("/tokenize", {"model": model, "prompt": text, "add_special_tokens": False})
            toks = out.get("tokens") if out else None
            one = isinstance(toks, list) and len(toks) == 1 and isinstance(toks[0], int)
            self._text_ids[key] = int(toks[0]) if one else None
        return self._text_ids[key]

    def _tokenizer_missing(self) -> bool:
        """No tokenizer endpoint is left to ask."""
        return {"/extras/tokenize", "/tokenize"} <= self._missing_tools

    # --- the handler ---------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        call = self._classify(request, raw)
        fault = self.fault
        if fault is None or call.endpoint is None or call.body is None:
            return await self._passthrough(call)
        if fault == "delay":
            if self._draw():
                wait = self._rng.uniform(0.0, catalog.DELAY_MAX_S)
                self._record(call, f"delayed {wait * 1000:.0f} ms")
                await asyncio.sleep(wait)
            return await self._passthrough(call)
        if fault in ("salt-drop", "salt-merge"):
            self._edit_salt(call)
            return await self._passthrough(call)
        if fault in ("bleed", "inject-context"):
            self._edit_context(call)
            return await self._passthrough(call)
        if fault == "stale":
            return await self._stale(call)

        result = await self._capture(call)
        if isinstance(result, web.Response):
            return result
        cap = result
        if cap.usable:
            if fault == "flip":
                await self._flip(call, cap)
            elif fault == "phantom-hit":
                self._phantom(call, cap)
            elif fault == "noise":
                self._noise(call, cap)
            elif fault == "swap":
                cap = await self._swap(call, cap)
        if fault == "reorder" and self._draw():
            rank, size = await self._reorderer.hold()
            self._record(call, f"held {catalog.REORDER_WINDOW_S * 1000:.0f} ms, released {rank + 1} of {size}")
        return await self._emit(call, cap)

    # --- request-side faults -------------------------------------------------------------------------

    def _edit_salt(self, call: _Call) -> None:
        assert call.body is not None
        salt = call.body.get("cache_salt")
        if salt is None or not self._draw():
            return
        if self.fault == "salt-drop":
            del call.body["cache_salt"]
            self._record(call, f"dropped cache_salt {salt!r}")
        else:
            call.body["cache_salt"] = MERGED_SALT
            self._record(call, f"replaced cache_salt {salt!r} with {MERGED_SALT!r}")
        call.body_changed = True

    def _edit_context(self, call: _Call) -> None:
        """bleed / inject-context: prepend (part of) the latest prompt of another tenant."""
        assert call.body is not None and call.endpoint is not None
        own = _prompt_text(call.body, call.endpoint)
        # A request the harness labelled (X-Harness-Op) takes its source only from other labelled
        # requests, so unlabelled side traffic (the capability probe) never becomes "another tenant".
        source = next((p for p in reversed(self._prompts)
                       if p[0] != call.tenant and (call.op is None or p[2] is not None)), None)
        if own is not None:
            self._prompts.append((call.tenant, call.user, call.op, own))
        if source is None or own is None or not self._draw():
            return
        s_tenant, s_user, s_op, s_text = source
        if self.fault == "bleed":
            words = s_text.split()[-catalog.BLEED_TAIL_WORDS:]
            text, what = " ".join(words), f"last {len(words)} words"
        else:
            text, what = s_text, f"whole prompt ({len(s_text.split())} words)"
        if not text or not _prepend(call.body, call.endpoint, text):
            return
        call.body_changed = True
        self._record(call, f"prepended {what} of op {s_op} (tenant {s_tenant}, user {s_user})")

    # --- response-side faults ------------------------------------------------------------------------

    async def _stale(self, call: _Call) -> web.StreamResponse:
        """Serve the stored response of a different prompt sharing a long prefix; else forward and store."""
        assert call.body is not None and call.endpoint is not None
        text = _prompt_text(call.body, call.endpoint)
        words = tuple(text.split()) if text is not None else None
        if words is not None:
            best: tuple[int, _Captured, _Call] | None = None
            for endpoint, model, stored_words, stored, stored_call in self._responses:
                if endpoint != call.endpoint or model != call.model or stored_words == words:
                    continue
                n = _common_prefix(words, stored_words)
                if n >= catalog.STALE_MIN_PREFIX_WORDS and (best is None or n > best[0]):
                    best = (n, stored, stored_call)
            if best is not None and self._draw():
                n, stored, src = best
                self._record(call, f"answered with the stored response of op {src.op} (user {src.user}), "
                                   f"whose prompt shares the first {n} words only")
                return await self._emit(call, _reshape(stored, call.endpoint, call))
        result = await self._capture(call)
        if isinstance(result, web.Response):
            return result
        if result.usable and words is not None:
            self._responses.append((call.endpoint, call.model, words, result, call))
        return await self._emit(call, result)

    async def _flip(self, call: _Call, cap: _Captured) -> None:
        """Change one confidently chosen output token to a word token outside its top logprobs."""
        assert cap.payloads is not None and call.endpoint is not None
        toks = _Tokens(cap.payloads, call.endpoint)
        if toks.by_text():
            await self._flip_by_text(call, cap, toks)
            return
        ids = toks.ids()
        candidates = _confident_positions(ids, toks.top)
        if not candidates or None in ids or not self._draw():
            return
        k, margin, top = self._rng.choice(candidates)
        old_ids: list[int] = [i for i in ids if i is not None]
        new_id = await self._replacement(call.model, set(top) | {old_ids[k]}, _prompt_token_ids(cap.payloads))
        if new_id is None:
            return
        toks.set_token(k, new_id, min(top.values()) - 1.0)
        note = await self._flip_text(call.model, toks, old_ids, k, new_id)
        cap.modified = True
        self._record(call, f"output position {k}: token {old_ids[k]} -> {new_id} "
                           f"(top-1 margin {margin:.2f} nats; new token not in top logprobs){note}")

    async def _flip_by_text(self, call: _Call, cap: _Captured, toks: _Tokens) -> None:
        """`flip` on a server that names tokens by text (llama.cpp): the same choice of position, with
        the replacement a pool word that the target's tokenizer calls one token, edited into the
        text, the tokens list, top logprobs, token logprobs and (shifted) text offsets alike."""
        keys = toks.keys()
        candidates = _confident_positions(keys, toks.top_keys)
        if not candidates or None in keys or not self._draw():
            return
        k, margin, top = self._rng.choice(candidates)
        texts: list[str] = [t for t in keys if t is not None]
        old = texts[k]
        seen = [t for j in range(len(texts)) if j != k for t in toks.top_keys(j)]
        found = await self._replacement_text(call.model, set(top) | {old}, seen)
        if found is None:
            return
        new, how = found
        offset = len("".join(texts[:k]))
        if toks.text() != "".join(texts) or not toks.replace_text(offset, old, new):
            return  # the text does not spell out the tokens: an edit could not stay consistent
        toks.set_key(k, new, min(top.values()) - 1.0)
        cap.modified = True
        self._record(call, f"output position {k}: token {old!r} -> {new!r} "
                           f"(top-1 margin {margin:.2f} nats; new token not in top logprobs; {how})")

    async def _replacement_text(self, model: str | None, exclude: set[str],
                                fallback: list[str]) -> tuple[str, str] | None:
        """A ' word' from the pool that the target tokenizes as one token and that is not in
        `exclude`, with how it was verified; without a tokenizer endpoint, a token text the server
        itself produced elsewhere in this response (a token by construction)."""
        from harness.scenario.words import word_pool

        pool = word_pool()
        for _ in range(8):
            text = f" {self._rng.choice(pool)}"
            if text in exclude:
                continue
            tid = await self._text_token(model, text)
            if tid is not None:
                return text, f"one token on the target: id {tid}"
            if self._tokenizer_missing():
                break
        rest = sorted({t for t in fallback if t not in exclude})
        return (self._rng.choice(rest), "a token the server produced elsewhere in this response") if rest else None

    async def _replacement(self, model: str | None, exclude: set[int], fallback: list[int]) -> int | None:
        """A pool-word token id not in `exclude` (else a prompt token id not in it)."""
        from harness.scenario.words import word_pool

        pool = word_pool()
        for _ in range(8):
            tid = await self._word_token(model, self._rng.choice(pool))
            if tid is not None and tid not in exclude:
                return tid
            if "/tokenize" in self._missing_tools:
                break
        rest = sorted({t for t in fallback if t not in exclude})
        return self._rng.choice(rest) if rest else None

    async def _flip_text(self, model: str | None, toks: _Tokens, old_ids: list[int], k: int, new_id: int) -> str:
        """Keep the text in step with the flipped token, decoding pieces on the target."""
        prefix = await self._detok(model, old_ids[:k])
        old_through = await self._detok(model, old_ids[:k + 1])
        new_through = await self._detok(model, old_ids[:k] + [new_id])
        if prefix is None or old_through is None or new_through is None:
            return "; text left unchanged (no /detokenize)"
        if not (old_through.startswith(prefix) and new_through.startswith(prefix)):
            return "; text left unchanged (pieces do not decode separately)"
        old_piece, new_piece = old_through[len(prefix):], new_through[len(prefix):]
        if not toks.replace_text(len(prefix), old_piece, new_piece):
            return "; text left unchanged (token text not found)"
        toks.set_bytes(k, new_piece)
        return f"; text {old_piece!r} -> {new_piece!r}"

    def _phantom(self, call: _Call, cap: _Captured) -> None:
        """Report a cache hit the server never had."""
        assert cap.payloads is not None
        for p in cap.payloads:
            usage = p.get("usage")
            if not isinstance(usage, dict):
                continue
            details = usage.get("prompt_tokens_details")
            prompt_tokens = usage.get("prompt_tokens")
            if not isinstance(details, dict) or details.get("cached_tokens") != 0 or not isinstance(prompt_tokens, int):
                continue
            fake = prompt_tokens // catalog.PHANTOM_BLOCK * catalog.PHANTOM_BLOCK
            if fake <= 0 or not self._draw():
                return
            details["cached_tokens"] = fake
            cap.modified = True
            self._record(call, f"reported cached_tokens {fake} (real 0) of {prompt_tokens} prompt tokens")
            return

    def _noise(self, call: _Call, cap: _Captured) -> None:
        assert cap.payloads is not None and call.endpoint is not None
        if not self._draw():
            return
        moved = _Tokens(cap.payloads, call.endpoint).jitter(self._rng, catalog.NOISE_SCALE)
        if moved:
            cap.modified = True
            self._record(call, f"jittered {moved} logprobs by ~{catalog.NOISE_SCALE:g}")

    async def _swap(self, call: _Call, cap: _Captured) -> _Captured:
        assert call.endpoint is not None
        if not self._draw():
            return cap
        got = await self._swaps.exchange(call, cap, self.swap_window_s)
        if got is None:
            return cap
        other_call, other_cap = got
        self._record(call, f"response swapped with that of op {other_call.op} (user {other_call.user})")
        return _reshape(other_cap, call.endpoint, call)


K = TypeVar("K", int, str)


def _confident_positions(chosen: list[K | None], top_of: Callable[[int], dict[K, float]],
                         ) -> list[tuple[int, float, dict[K, float]]]:
    """(position, top-1 margin, top logprobs) of each output position whose chosen token leads
    its top logprobs by more than FLIP_MIN_MARGIN: where `flip` may act (by id or by text)."""
    out: list[tuple[int, float, dict[K, float]]] = []
    for k, key in enumerate(chosen):
        top = top_of(k)
        if key is None or len(top) < 2:
            continue
        ranked = sorted(top.items(), key=lambda kv: -kv[1])
        margin = ranked[0][1] - ranked[1][1]
        if ranked[0][0] == key and margin > catalog.FLIP_MIN_MARGIN:
            out.append((k, margin, top))
    return out


def _abort(request: web.Request) -> None:
    """Close the downstream connection without ending the chunked body, so the client sees the break."""
    if request.transport is not None:
        request.transport.close()
