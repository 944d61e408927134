"""Token ids recovered through the server's own tokenizer, for servers that key logprobs by token
*text* and return no token ids (llama.cpp's Python server).

Each generated token's text is sent to `POST /extras/tokenize` (cached per client) and must come
back as exactly one id; if any position cannot be mapped, the whole output text is tokenized
instead. `GenerationResult.token_ids_source` says which happened ("tokenize", "tokenize-text"),
so checks can say so.
"""

from __future__ import annotations

import httpx

from harness.client.parse import Accumulator
from harness.client.types import GenerationRequest, GenerationResult


class TextIds:
    """Maps token texts to ids with the target's /extras/tokenize, remembering what it learnt."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self._http = http
        self._text_ids: dict[str, int | None] = {}  # token text -> id
        self._endpoint: bool | None = None  # None: not tried yet

    async def tokenize(self, model: str | None, text: str) -> list[int] | None:
        """The server's own tokenization of `text` via POST /extras/tokenize (None: not offered)."""
        if self._endpoint is False:
            return None
        try:
            resp = await self._http.post("/extras/tokenize", json={"model": model, "input": text})
        except httpx.HTTPError:
            return None
        if resp.status_code in (404, 405):
            self._endpoint = False
            return None
        try:
            tokens = resp.json().get("tokens") if resp.status_code == 200 else None
        except (ValueError, AttributeError):
            tokens = None
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            return None
        self._endpoint = True
        return tokens

    async def text_id(self, model: str | None, text: str) -> int | None:
        """The one id `text` tokenizes to, else None (several ids, none, or no tokenizer)."""
        if text not in self._text_ids:
            ids = await self.tokenize(model, text) if text else None
            self._text_ids[text] = ids[0] if ids is not None and len(ids) == 1 else None
        return self._text_ids[text]

    async def recover(self, req: GenerationRequest, acc: Accumulator, result: GenerationResult) -> None:
        """Map each generated token's text to one id; else tokenize the whole output text."""
        model = req.model or result.served_model  # llama.cpp answers with its file path as model
        ids = [await self.text_id(model, t) for t in acc.token_texts]
        if acc.token_texts and all(i is not None for i in ids) and "".join(acc.token_texts) == result.output_text:
            result.output_token_ids = [i for i in ids if i is not None]
            result.token_ids_source = "tokenize"
            tops: list[dict[int, float]] = []
            for top in acc.top_texts:
                mapped: dict[int, float] = {}
                for text, lp in top.items():
                    tid = await self.text_id(model, text)
                    if tid is not None:
                        mapped[tid] = lp
                tops.append(mapped)
            if len(tops) == len(result.top_logprobs):
                result.top_logprobs = tops
            return
        whole = await self.tokenize(model, result.output_text) if result.output_text else None
        if whole:
            result.output_token_ids = whole
            result.token_ids_source = "tokenize-text"
