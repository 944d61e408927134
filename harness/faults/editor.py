"""The OpenAI response editor: the output tokens of choice 0 of a response, across its payloads
(a body, or the chunks of a stream), read and edited consistently in every place the response
names them. Faults edit responses only through it.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from harness.client import by_id, entries_by_id, token_id_of


@dataclass
class Slot:
    """Output token k lives in `choice` (of one payload) at index j of its token lists."""

    choice: dict[str, Any]
    j: int


class Tokens:
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
        self.slots: list[Slot] = []
        self.choices: list[dict[str, Any]] = []
        for p in payloads:
            for c in p.get("choices") or []:
                if not isinstance(c, dict) or c.get("index", 0) != 0:
                    continue
                self.choices.append(c)
                self.slots.extend(Slot(c, j) for j in range(self._count(c)))

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
        return by_id(raw) if self.endpoint == "completions" else entries_by_id(raw)

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
            return {key: float(v) for key, v in raw.items() if isinstance(key, str) and finite(v)}
        return {e["token"]: float(e["logprob"]) for e in raw
                if isinstance(e, dict) and isinstance(e.get("token"), str) and finite(e.get("logprob"))}

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

            def d(key: str, draws: dict[str, float] = draws) -> float:
                if key not in draws:
                    draws[key] = rng.choice((-1.0, 1.0)) * rng.uniform(0.5, 1.5) * scale
                return draws[key]

            lp = self._lp(s.choice)
            if self.endpoint == "completions":
                toks, lps, tops = lp.get("tokens") or [], lp.get("token_logprobs"), lp.get("top_logprobs")
                key = toks[s.j] if s.j < len(toks) else ""
                if isinstance(lps, list) and s.j < len(lps) and finite(lps[s.j]):
                    lps[s.j] = _nudge(lps[s.j], d(key))
                    moved += 1
                if isinstance(tops, list) and s.j < len(tops) and isinstance(tops[s.j], dict):
                    for tk, v in tops[s.j].items():
                        if finite(v):
                            tops[s.j][tk] = _nudge(v, d(tk))
                            moved += 1
            else:
                content = lp.get("content") or []
                if s.j >= len(content):
                    continue
                entry = content[s.j]
                if finite(entry.get("logprob")):
                    entry["logprob"] = _nudge(entry["logprob"], d(entry.get("token", "")))
                    moved += 1
                for e in entry.get("top_logprobs") or []:
                    if finite(e.get("logprob")):
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


def finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _nudge(lp: float, d: float) -> float:
    """Move a logprob by d, keeping it a valid logprob (<= 0)."""
    v = float(lp) + d
    return v if v <= 0.0 else float(lp) - abs(d)


def prompt_token_ids(payloads: list[dict[str, Any]]) -> list[int]:
    for p in payloads:
        if isinstance(p.get("prompt_token_ids"), list):
            return list(p["prompt_token_ids"])
        for c in p.get("choices") or []:
            if isinstance(c, dict) and isinstance(c.get("prompt_token_ids"), list):
                return list(c["prompt_token_ids"])
    return []
