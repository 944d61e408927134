"""Reading a response: token ids from `token_id:N` keys, top logprobs by id, and the accumulator
that folds one response (or the events of a stream) into a `GenerationResult`.

The fault proxy reads top logprobs with the same functions, so a fault decides on exactly what
the client will see.
"""

from __future__ import annotations

import re
from typing import Any

from harness.client.types import Endpoint, GenerationResult

_TOKEN_ID_RE = re.compile(r"^token_id:(-?\d+)$")
_NAN = float("nan")
_ID_OF_KEY: dict[str, int] = {}  # "token_id:N" -> N for the keys met so far (one per vocabulary entry)
_ID_MEMO_LIMIT = 1 << 20  # a server inventing keys without end cannot grow the memo past this


def _parse_token_id(token: str) -> int | None:
    if token[:9] != "token_id:":  # the common miss, without a regex
        return None
    digits = token[9:]
    if digits.isdigit():  # the common hit, without a regex (ASCII digits only: see isascii)
        return int(digits) if digits.isascii() else None
    m = _TOKEN_ID_RE.match(token)
    return int(m.group(1)) if m else None


def token_id_of(token: object) -> int | None:
    """N for a `token_id:N` key (vLLM's return_tokens_as_token_ids), else None (any other value).
    Keys are memoised: a stream repeats the same few thousand keys, and a dict lookup costs a
    fraction of parsing one."""
    if token.__class__ is not str:
        return None
    tid = _ID_OF_KEY.get(token)
    if tid is None:
        tid = _parse_token_id(token)
        if tid is not None and len(_ID_OF_KEY) < _ID_MEMO_LIMIT:
            _ID_OF_KEY[token] = tid
    return tid


def by_id(top: dict[str, Any]) -> dict[int, float]:
    """Top logprobs keyed `token_id:N` as {N: logprob}. Keys that are not ids and null logprobs
    are left out; a logprob that is not a number raises ValueError (the request fails)."""
    try:  # the common case: every key met before, every value a number (sum refuses the rest)
        out = {_ID_OF_KEY[key]: lp for key, lp in top.items()}
        sum(out.values())
        return out
    except (KeyError, TypeError):
        pass
    out = {}
    for key, lp in top.items():
        tid = token_id_of(key)
        if tid is not None and lp is not None:
            out[tid] = logprob_value(lp)
    return out


def entries_by_id(entries: list[dict[str, Any]]) -> dict[int, float]:
    """Chat top logprobs (entries of `token` and `logprob`) as {N: logprob}, by `by_id`'s rule."""
    return {t: logprob_value(e["logprob"]) for e in entries
            if (t := token_id_of(e.get("token", ""))) is not None and e.get("logprob") is not None}


def logprob_value(value: object) -> float:
    """A logprob as a float: a number, or a string that float() reads; anything else fails."""
    if value.__class__ is float:
        return value
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"logprob is not a number: {str(value)[:100]}") from None


class Accumulator:
    """Folds one response (or a stream of chunks) into a GenerationResult."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.result = GenerationResult(ok=True)
        self._ids_from_logprobs: list[int] = []
        self._ids_from_field: list[int] = []
        self._ids_field_seen = False  # the server sent a token_ids field (possibly empty)
        self.token_texts: list[str] = []  # generated tokens given only as text (no token_id: keys)
        self.top_texts: list[dict[str, float]] = []  # their top logprobs, keyed by text
        self._text: list[str] = []  # output text pieces, joined once at the end

    def add(self, payload: dict[str, Any]) -> None:
        """Fold one response body or stream event in. A body of the wrong shape (a field of the
        wrong type) raises ValueError, so the request fails instead of the run."""
        try:
            self._add(payload)
        except (TypeError, AttributeError, KeyError, IndexError) as exc:
            raise ValueError(f"malformed response ({type(exc).__name__}: {exc})") from exc

    def _add(self, payload: dict[str, Any]) -> None:
        r = self.result
        get = payload.get
        model = get("model")
        if model.__class__ is str:
            r.served_model = model
        prompt_ids = get("prompt_token_ids")
        if prompt_ids is not None:
            r.prompt_token_ids = list(prompt_ids)
        usage = get("usage")
        if usage:
            r.prompt_tokens = usage.get("prompt_tokens", r.prompt_tokens)
            details = usage.get("prompt_tokens_details") or {}
            if details.get("cached_tokens") is not None:
                r.cached_tokens = int(details["cached_tokens"])
        chat = self.endpoint != "completions"
        for choice in get("choices") or ():
            get = choice.get
            if get("index", 0) != 0:
                continue
            text = get("text") if not chat else (get("message") or get("delta") or {}).get("content")
            if text:
                if text.__class__ is not str:
                    raise TypeError(f"text is {type(text).__name__}, not a string")
                self._text.append(text)
            prompt_ids = get("prompt_token_ids")
            if prompt_ids is not None:
                r.prompt_token_ids = list(prompt_ids)
            ids = get("token_ids")
            if ids is not None:
                self._ids_from_field += ids
                self._ids_field_seen = True
            lp = get("logprobs")
            if lp:
                if chat:
                    self._add_chat_logprobs(lp)
                else:
                    self._add_logprobs(lp)
            finish = get("finish_reason")
            if finish:
                r.finish_reason = finish

    def _add_logprobs(self, lp: dict[str, Any]) -> None:
        """/v1/completions logprobs: parallel lists of tokens, their logprobs and top dicts."""
        r = self.result
        tokens = lp.get("tokens") or ()
        logprobs = lp.get("token_logprobs") or ()
        tops = lp.get("top_logprobs") or ()
        n_values, n_tops = len(logprobs), len(tops)
        for i, tok in enumerate(tokens):
            tid = token_id_of(tok)
            if tid is not None:
                self._ids_from_logprobs.append(tid)
            value = logprobs[i] if i < n_values else None
            r.token_logprobs.append(logprob_value(value) if value is not None else _NAN)
            top = (tops[i] if i < n_tops else None) or {}
            r.top_logprobs.append(by_id(top))
            if tid is None and isinstance(tok, str):
                self.token_texts.append(tok)
                self.top_texts.append({k: logprob_value(v) for k, v in top.items() if v is not None})

    def _add_chat_logprobs(self, lp: dict[str, Any]) -> None:
        """/v1/chat/completions logprobs: one entry per token, each with its top entries."""
        r = self.result
        for entry in lp.get("content") or []:
            tid = token_id_of(entry.get("token", ""))
            if tid is not None:
                self._ids_from_logprobs.append(tid)
            value = entry.get("logprob")
            r.token_logprobs.append(logprob_value(value) if value is not None else _NAN)  # null: missing
            r.top_logprobs.append(entries_by_id(entry.get("top_logprobs") or []))
            if tid is None and isinstance(entry.get("token"), str):
                self.token_texts.append(entry["token"])
                self.top_texts.append({e["token"]: logprob_value(e["logprob"]) for e in entry.get("top_logprobs") or []
                                       if isinstance(e.get("token"), str) and e.get("logprob") is not None})

    def finish(self) -> GenerationResult:
        r = self.result
        r.output_text = "".join(self._text)
        r.output_token_ids = self._ids_from_field if self._ids_field_seen else self._ids_from_logprobs
        if r.output_token_ids:
            r.token_ids_source = "server"
        return r
