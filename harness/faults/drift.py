"""`drift` (benign): non-batch-invariant numerics, emulated: near-tied top-two tokens swap under load.

On GPUs in bf16 or fp16 without batch-invariant kernels the same greedy request can give another
token where the top two are nearly tied, more often the more requests share its batch. `drift`
swaps the chosen token with the runner-up at one such position, consistently in ids, logprobs
(the two values trade places, so both sides' margins stay what the server computed) and text.
The probability is `flip_probability(margin, in_flight)`: zero at or above `DRIFT_MARGIN` and for
a request alone, rising linearly as the margin shrinks and with the requests in flight until
`DRIFT_FULL_LOAD`. Later tokens are left as the server sent them.

Settings: no GPU measurement of the margin / load law is in bench/ yet, so the defaults come from
published figures and the number format, not from a measurement of ours. bf16 keeps 8 significant
bits, so logits between 8 and 16 are 2^-4 = 0.0625 apart: a reduction-order change between batch
shapes that moves a logit across a rounding boundary moves it by that much (`DRIFT_MARGIN`).
Published: token probabilities vary visibly under nondeterminism only between about 0.1 and 0.9
(arXiv 2601.06118), i.e. where the top two are close; 1000 identical greedy requests to a vLLM
server gave 80 distinct completions, the first split after 103 tokens (Thinking Machines,
"Defeating Nondeterminism in LLM Inference", 2025); outputs differ with the batch size, not
between two runs of the same batch (ibid.), hence no flips for a request alone.
"""

from __future__ import annotations

import time

from harness.checks.base import Need
from harness.client import token_id_of
from harness.faults.base import Fault, FaultContext, register
from harness.faults.editor import Tokens
from harness.faults.exchange import Call, Captured

DRIFT_MARGIN = 0.0625
"""Top-1 minus top-2 logprob (nats) below which a position may flip: one bf16 step of a logit
between 8 and 16 (2^-4), so two logits closer than that can round either way."""
DRIFT_TIE_FLIP = 0.5
"""Flip probability of an exact tie at full load (a tie goes either way)."""
DRIFT_FULL_LOAD = 8
"""Requests in flight at which the flip probability stops growing (a lone request never flips)."""
_STALE_S = 600.0
"""A request without a response after this long no longer counts as in flight (an upstream error)."""


def flip_probability(margin: float, in_flight: int) -> float:
    """The chance that a position whose top-two margin is `margin` flips with `in_flight` requests."""
    if margin >= DRIFT_MARGIN or margin < 0 or in_flight <= 1:
        return 0.0
    load = min(1.0, (in_flight - 1) / (DRIFT_FULL_LOAD - 1))
    return DRIFT_TIE_FLIP * (1.0 - margin / DRIFT_MARGIN) * load


@register
class Drift(Fault):
    name = "drift"
    kind = "benign"
    changes = (f"Swaps the chosen token with the runner-up at one position whose top-two margin is below "
               f"{DRIFT_MARGIN:g} nats, with a probability that grows as the margin shrinks and with the requests "
               f"in flight (zero alone, at most {DRIFT_TIE_FLIP:g} at a tie with {DRIFT_FULL_LOAD} in flight), "
               "consistently in token ids, logprobs and text. Needs token ids and 2 top logprobs.")
    models = ("a healthy server without batch-invariant kernels (bf16/fp16 on GPUs): greedy outputs that differ "
              "at near-ties depending on what else is in the batch.")
    needs = (Need.TOKEN_IDS, Need.TOP_LOGPROBS)
    scenarios = ("shared-system-prompt.yaml", "burst.yaml", "multi-turn.yaml", "shared-document.yaml")
    controls_every_scenario = True
    edits_response = True

    def __init__(self, ctx: FaultContext) -> None:
        super().__init__(ctx)
        self._live: dict[int, tuple[float, int]] = {}  # seq -> (started, most requests in flight seen)

    async def on_request(self, call: Call) -> Captured | None:
        now = time.monotonic()
        for seq in [s for s, (t, _) in self._live.items() if now - t > _STALE_S]:
            del self._live[seq]
        self._live[call.seq] = (now, 0)
        n = len(self._live)
        for seq, (t, peak) in self._live.items():
            self._live[seq] = (t, max(peak, n))
        return None

    async def on_response(self, call: Call, cap: Captured) -> Captured:
        _, load = self._live.pop(call.seq, (0.0, 1))
        if cap.usable and self.ctx.draw():
            await self._drift(call, cap, load)
        return cap

    async def _drift(self, call: Call, cap: Captured, load: int) -> None:
        assert cap.payloads is not None and call.endpoint is not None
        toks = Tokens(cap.payloads, call.endpoint)
        ids = toks.ids()
        if toks.by_text() or None in ids:
            return
        chosen: list[int] = [i for i in ids if i is not None]
        for k, tid in enumerate(chosen):
            top = toks.top(k)
            if len(top) < 2:
                continue
            (ta, la), (tb, lb) = sorted(top.items(), key=lambda kv: -kv[1])[:2]
            if ta != tid:
                continue  # not a greedy choice here: nothing to emulate
            p = flip_probability(la - lb, load)
            if p <= 0 or self.ctx.rng.random() >= p:
                continue
            text = await self._swap_text(call.model, toks, chosen, k, tb)
            if text is None:
                return  # the text could not follow: change nothing rather than something inconsistent
            _swap(toks, k, ta, tb, la, lb)
            cap.modified = True
            self.ctx.record(call, f"output position {k}: swapped near-tied tokens {ta} -> {tb} (margin "
                               f"{la - lb:.3g} nats, {load} request(s) in flight, flip probability {p:.2f}){text}")
            return

    async def _swap_text(self, model: str | None, toks: Tokens, ids: list[int], k: int, new_id: int) -> str | None:
        """Put token `new_id`'s text in place of token k's (decoded on the target); None if it cannot."""
        tk = self.ctx.tokenizer
        prefix = await tk.detokenize(model, ids[:k])
        old_through = await tk.detokenize(model, ids[:k + 1])
        new_through = await tk.detokenize(model, [*ids[:k], new_id])
        if prefix is None or old_through is None or new_through is None:
            return None
        if not (old_through.startswith(prefix) and new_through.startswith(prefix)):
            return None
        old_piece, new_piece = old_through[len(prefix):], new_through[len(prefix):]
        if not toks.replace_text(len(prefix), old_piece, new_piece):
            return None
        toks.set_bytes(k, new_piece)
        return f"; text {old_piece!r} -> {new_piece!r}"


def _swap(toks: Tokens, k: int, ta: int, tb: int, la: float, lb: float) -> None:
    """Make tb the chosen token at k with ta's logprob, and give ta tb's, wherever the response names them."""
    s = toks.slots[k]
    lp = s.choice.get("logprobs")
    if toks.endpoint == "completions":
        tops = lp.get("top_logprobs") if isinstance(lp, dict) else None
        top = tops[s.j] if isinstance(tops, list) and s.j < len(tops) and isinstance(tops[s.j], dict) else {}
        kb = next((key for key in top if token_id_of(key) == tb), f"token_id:{tb}")
        ka = next((key for key in top if token_id_of(key) == ta), None)
        toks.set_key(k, kb, la, tb)
        if ka is not None:
            top[ka] = lb
        return
    content = lp.get("content") if isinstance(lp, dict) else None
    if not isinstance(content, list) or s.j >= len(content) or not isinstance(content[s.j], dict):
        return
    entry = content[s.j]
    entries = [e for e in entry.get("top_logprobs") or [] if isinstance(e, dict)]
    b_entry = next((e for e in entries if token_id_of(e.get("token")) == tb), None)
    bytes_b = entry.get("bytes")
    kb = b_entry["token"] if b_entry is not None else f"token_id:{tb}"
    if b_entry is not None:
        bytes_b = b_entry.get("bytes", bytes_b)
    for e in entries:
        if token_id_of(e.get("token")) == ta:
            e["logprob"] = lb
        elif token_id_of(e.get("token")) == tb:
            e["logprob"] = la
    ids = s.choice.get("token_ids")
    if isinstance(ids, list) and s.j < len(ids):
        ids[s.j] = tb
    entry["token"], entry["logprob"] = kb, la
    if bytes_b is not None:
        entry["bytes"] = bytes_b
