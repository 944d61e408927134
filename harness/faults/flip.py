"""`flip`: one confidently chosen output token changed to a word outside its top logprobs."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from harness.checks.base import Need
from harness.faults.base import Fault, register
from harness.faults.editor import Tokens, prompt_token_ids
from harness.faults.exchange import Call, Captured

FLIP_MIN_MARGIN = 1.0
"""Top-1 minus top-2 logprob (nats) a position needs before `flip` may change its token."""


@register
class Flip(Fault):
    name = "flip"
    changes = (f"Changes one output token at a position whose top-1 vs top-2 margin exceeds {FLIP_MIN_MARGIN:g} "
               "nats to a word token outside that position's top logprobs, consistently in token_ids, logprobs and "
               "text (on a server that keys logprobs by token text, such as llama.cpp: a word the server's "
               "tokenizer calls one token, edited into the text, tokens, top logprobs and shifted text offsets); "
               "later tokens are left as they were. Needs at least 2 top logprobs per position.")
    models = ("cached and cold paths that compute different answers (a wrong KV block, a kernel reading a stale "
              "slot), surfacing as one confidently wrong token that no float drift explains.")
    detected_by = "cache transparency (a non-near-tie divergence)"
    detectors = ("cache-transparency",)
    needs = (Need.TOKEN_IDS, Need.TOP_LOGPROBS)
    scenarios = ("strict-prefix.yaml",)
    edits_response = True

    async def on_response(self, call: Call, cap: Captured) -> Captured:
        if cap.usable:
            await self._flip(call, cap)
        return cap

    async def _flip(self, call: Call, cap: Captured) -> None:
        """Change one confidently chosen output token to a word token outside its top logprobs."""
        assert cap.payloads is not None and call.endpoint is not None
        toks = Tokens(cap.payloads, call.endpoint)
        if toks.by_text():
            await self._flip_by_text(call, cap, toks)
            return
        ids = toks.ids()
        candidates = _confident_positions(ids, toks.top)
        if not candidates or None in ids or not self.ctx.draw():
            return
        k, margin, top = self.ctx.rng.choice(candidates)
        old_ids: list[int] = [i for i in ids if i is not None]
        new_id = await self._replacement(call.model, set(top) | {old_ids[k]}, prompt_token_ids(cap.payloads))
        if new_id is None:
            return
        toks.set_token(k, new_id, min(top.values()) - 1.0)
        note = await self._flip_text(call.model, toks, old_ids, k, new_id)
        cap.modified = True
        self.ctx.record(call, f"output position {k}: token {old_ids[k]} -> {new_id} "
                           f"(top-1 margin {margin:.2f} nats; new token not in top logprobs){note}")

    async def _flip_by_text(self, call: Call, cap: Captured, toks: Tokens) -> None:
        """`flip` on a server that names tokens by text (llama.cpp): the same choice of position, with
        the replacement a pool word that the target's tokenizer calls one token, edited into the
        text, the tokens list, top logprobs, token logprobs and (shifted) text offsets alike."""
        keys = toks.keys()
        candidates = _confident_positions(keys, toks.top_keys)
        if not candidates or None in keys or not self.ctx.draw():
            return
        k, margin, top = self.ctx.rng.choice(candidates)
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
        self.ctx.record(call, f"output position {k}: token {old!r} -> {new!r} "
                           f"(top-1 margin {margin:.2f} nats; new token not in top logprobs; {how})")

    async def _replacement_text(self, model: str | None, exclude: set[str],
                                fallback: list[str]) -> tuple[str, str] | None:
        """A ' word' from the pool that the target tokenizes as one token and that is not in
        `exclude`, with how it was verified; without a tokenizer endpoint, a token text the server
        itself produced elsewhere in this response (a token by construction)."""
        from harness.scenario.words import word_pool

        pool = word_pool()
        for _ in range(8):
            text = f" {self.ctx.rng.choice(pool)}"
            if text in exclude:
                continue
            tid = await self.ctx.tokenizer.text_token(model, text)
            if tid is not None:
                return text, f"one token on the target: id {tid}"
            if self.ctx.tokenizer.all_missing():
                break
        rest = sorted({t for t in fallback if t not in exclude})
        return (self.ctx.rng.choice(rest), "a token the server produced elsewhere in this response") if rest else None

    async def _replacement(self, model: str | None, exclude: set[int], fallback: list[int]) -> int | None:
        """A pool-word token id not in `exclude` (else a prompt token id not in it)."""
        from harness.scenario.words import word_pool

        pool = word_pool()
        for _ in range(8):
            tid = await self.ctx.tokenizer.word_token(model, self.ctx.rng.choice(pool))
            if tid is not None and tid not in exclude:
                return tid
            if "/tokenize" in self.ctx.tokenizer.missing:
                break
        rest = sorted({t for t in fallback if t not in exclude})
        return self.ctx.rng.choice(rest) if rest else None

    async def _flip_text(self, model: str | None, toks: Tokens, old_ids: list[int], k: int, new_id: int) -> str:
        """Keep the text in step with the flipped token, decoding pieces on the target."""
        prefix = await self.ctx.tokenizer.detokenize(model, old_ids[:k])
        old_through = await self.ctx.tokenizer.detokenize(model, old_ids[:k + 1])
        new_through = await self.ctx.tokenizer.detokenize(model, [*old_ids[:k], new_id])
        if prefix is None or old_through is None or new_through is None:
            return "; text left unchanged (no /detokenize)"
        if not (old_through.startswith(prefix) and new_through.startswith(prefix)):
            return "; text left unchanged (pieces do not decode separately)"
        old_piece, new_piece = old_through[len(prefix):], new_through[len(prefix):]
        if not toks.replace_text(len(prefix), old_piece, new_piece):
            return "; text left unchanged (token text not found)"
        toks.set_bytes(k, new_piece)
        return f"; text {old_piece!r} -> {new_piece!r}"


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
        if ranked[0][0] == key and margin > FLIP_MIN_MARGIN:
            out.append((k, margin, top))
    return out
