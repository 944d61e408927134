"""The target's own tokenizer, as the faults that rewrite tokens ask it: vLLM's /tokenize and
/detokenize, llama.cpp's /extras/tokenize. Answers are remembered; a path that answered 404 is
not asked again.
"""

from __future__ import annotations

from typing import Any

import aiohttp


class TargetTokenizer:
    """Tokenizer helper endpoints of one target, over the proxy's upstream session."""

    def __init__(self, session: aiohttp.ClientSession, target_url: str, timeout_s: float) -> None:
        self._session = session
        self._target_url = target_url
        self._timeout = aiohttp.ClientTimeout(total=min(10.0, timeout_s))
        self._word_ids: dict[tuple[str | None, str], int | None] = {}
        self._text_ids: dict[tuple[str | None, str], int | None] = {}
        self.missing: set[str] = set()
        """Helper endpoints (/tokenize, /extras/tokenize, ...) that answered 404: not asked again."""

    async def _tool(self, path: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        """POST to a tokenizer helper endpoint; None when unavailable (a 404 marks the path
        missing for good)."""
        if path in self.missing:
            return None
        try:
            async with self._session.post(self._target_url + path, json=payload, timeout=self._timeout) as r:
                if r.status == 404:
                    self.missing.add(path)
                if r.status != 200:
                    return None
                out = await r.json(content_type=None)
                return out if isinstance(out, dict) else None
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None

    async def detokenize(self, model: str | None, ids: list[int]) -> str | None:
        """The text of `ids` on the target (None: no /detokenize)."""
        if not ids:
            return ""
        out = await self._tool("/detokenize", {"model": model, "tokens": ids})
        p = out.get("prompt") if out else None
        return p if isinstance(p, str) else None

    async def word_token(self, model: str | None, word: str) -> int | None:
        """The single token id of ' word' on the target, if it is one token."""
        key = (model, word)
        if key not in self._word_ids:
            out = await self._tool("/tokenize", {"model": model, "prompt": f" {word}", "add_special_tokens": False})
            toks = out.get("tokens") if out else None
            self._word_ids[key] = int(toks[0]) if isinstance(toks, list) and len(toks) == 1 else None
        return self._word_ids[key]

    async def text_token(self, model: str | None, text: str) -> int | None:
        """The id of `text` if the target tokenizes it as exactly one token (llama.cpp's
        /extras/tokenize, else vLLM's /tokenize); None if it is not one token or no tokenizer answers.
        The harness client recovers ids on text-keyed servers the same way, so a replacement that
        passes here maps back to one id there."""
        key = (model, text)
        if key not in self._text_ids:
            out = await self._tool("/extras/tokenize", {"model": model, "input": text})
            if out is None and "/extras/tokenize" in self.missing:
                out = await self._tool("/tokenize", {"model": model, "prompt": text, "add_special_tokens": False})
            toks = out.get("tokens") if out else None
            one = isinstance(toks, list) and len(toks) == 1 and isinstance(toks[0], int)
            self._text_ids[key] = int(toks[0]) if one and toks is not None else None
        return self._text_ids[key]

    def all_missing(self) -> bool:
        """No tokenizer endpoint is left to ask."""
        return {"/extras/tokenize", "/tokenize"} <= self.missing
