"""One proxied exchange: the downstream request (`Call`) and a whole upstream response read into
memory (`Captured`), with their wire forms: the captured response parsed (a stream with the
client's own SSE parser) and rendered back, and converted between stream and body (`swap` and
`stale` hand a response to a request of the other form).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from harness.client import stream_data

SSE_TYPE = "text/event-stream"


@dataclass
class Call:
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
class Captured:
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

    @classmethod
    def error(cls, status: int, reason: str, body: dict[str, Any]) -> Captured:
        """A JSON error answer made by a fault instead of the server's."""
        return cls(status, reason, [("Content-Type", "application/json")], json.dumps(body).encode(), False,
                   payloads=[body])

    @property
    def usable(self) -> bool:
        """A complete, successful, parsed response (the only kind faults edit or reuse)."""
        return self.status == 200 and self.payloads is not None and self.broken is None and (self.done or not self.sse)

    def prompt_details(self) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """(usage, usage.prompt_tokens_details) of every payload that reports both as objects: where
        the cached-token count lives, for the faults that edit it."""
        for p in self.payloads or ():
            usage = p.get("usage")
            details = usage.get("prompt_tokens_details") if isinstance(usage, dict) else None
            if isinstance(usage, dict) and isinstance(details, dict):
                yield usage, details


def parse_captured(cap: Captured) -> None:
    """Fill `cap.payloads` (and `cap.done`) from `cap.raw`; left None when any part is not a JSON
    object. A stream is read with the client's SSE parser, so the proxy sees the events the
    client will (an event without its closing blank line is none)."""
    if cap.sse:
        chunks: list[dict[str, Any]] = []
        for data in stream_data(cap.raw):
            if data.strip() == b"[DONE]":
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


def render(cap: Captured) -> bytes:
    """Serialise edited payloads back to the wire form of `cap`."""
    assert cap.payloads is not None
    if not cap.sse:
        return json.dumps(cap.payloads[0]).encode()
    out = [f"data: {json.dumps(p)}\n\n" for p in cap.payloads]
    if cap.done:
        out.append("data: [DONE]\n\n")
    return "".join(out).encode()


# --- stream <-> body conversion (swap and stale hand a response to a request of the other form) ---


def as_body(payloads: list[dict[str, Any]], sse: bool, endpoint: str) -> dict[str, Any]:
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


def as_chunks(body: dict[str, Any], endpoint: str, include_usage: bool) -> list[dict[str, Any]]:
    """Stream chunks equivalent to a non-streaming body (one content chunk per choice)."""
    chat = endpoint == "chat"
    head: dict[str, Any] = {k: body[k] for k in ("id", "created", "model") if k in body}
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


def reshape(cap: Captured, endpoint: str, call: Call) -> Captured:
    """`cap` in the wire form `call` asked for (stream or not)."""
    assert cap.payloads is not None
    if cap.sse == call.stream:
        return Captured(cap.status, cap.reason, cap.headers, cap.raw, cap.sse, payloads=copy.deepcopy(cap.payloads),
                         done=cap.done, modified=cap.modified)
    body = as_body(cap.payloads, cap.sse, endpoint)
    if call.stream:
        headers = [(k, v) for k, v in cap.headers if k.lower() != "content-type"]
        headers.append(("Content-Type", f"{SSE_TYPE}; charset=utf-8"))
        chunks = as_chunks(body, endpoint, call.include_usage)
        return Captured(cap.status, cap.reason, headers, b"", True, payloads=chunks, done=True, modified=True)
    headers = [(k, v) for k, v in cap.headers if k.lower() != "content-type"]
    headers.append(("Content-Type", "application/json"))
    return Captured(cap.status, cap.reason, headers, b"", False, payloads=[body], modified=True)
