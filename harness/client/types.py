"""The wire types: one request as the harness means it, and one normalised result.

A failed request is a result with `ok=False` and its status and error body, never an exception:
the driver records it. A cached-token count that the server did not report is `None` (unknown),
never 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Endpoint = Literal["completions", "chat"]


@dataclass
class GenerationRequest:
    """One request as the harness means it; `body()` renders the wire JSON."""

    endpoint: Endpoint
    model: str
    prompt: str | None = None
    messages: list[dict[str, str]] | None = None
    max_tokens: int = 16
    temperature: float = 0.0
    seed: int | None = None
    top_logprobs: int = 5
    stream: bool = False
    cache_salt: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def path(self) -> str:
        return "/v1/completions" if self.endpoint == "completions" else "/v1/chat/completions"

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "stream": self.stream,
            "return_tokens_as_token_ids": True,
            "return_token_ids": True,
        }
        if self.endpoint == "completions":
            body["prompt"] = self.prompt
            if self.top_logprobs:
                body["logprobs"] = self.top_logprobs
        else:
            body["messages"] = self.messages
            if self.top_logprobs:
                body["logprobs"] = True
                body["top_logprobs"] = self.top_logprobs
        if self.seed is not None:
            body["seed"] = self.seed
        if self.stream:
            body["stream_options"] = {"include_usage": True}
        if self.cache_salt is not None:
            body["cache_salt"] = self.cache_salt
        body.update(self.extra)
        return body


@dataclass
class GenerationResult:
    """What the target returned for one request, normalised across endpoints and streaming."""

    ok: bool
    status: int | None = None
    error: str | None = None
    served_model: str | None = None  # the model the server says answered (it may resolve aliases)
    output_token_ids: list[int] = field(default_factory=list)
    output_text: str = ""
    prompt_token_ids: list[int] | None = None
    token_logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[dict[int, float]] = field(default_factory=list)
    cached_tokens: int | None = None
    prompt_tokens: int | None = None
    ttft_s: float | None = None
    latency_s: float | None = None
    finish_reason: str | None = None
    # "server": ids as the server sent them; "tokenize": each token's text mapped to one id by the
    # server's /extras/tokenize; "tokenize-text": the whole output text tokenized; None: no ids.
    token_ids_source: str | None = None
