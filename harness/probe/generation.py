"""Probe step for generation itself: completions and chat, output and prompt token ids, the
logprob depth the server grants, whether streaming gives the same tokens, and whether the same
greedy request sent several times at once gives the same tokens (a first look at the noise that
the run's A/A calibration measures, docs/design.md "Comparing two generations")."""

from __future__ import annotations

import asyncio

from harness.client import Endpoint, GenerationResult
from harness.probe.session import ProbeSession, fresh_prompt, one_line
from harness.probe.types import Capability

LOGPROB_DEPTHS = (20, 5, 1)  # asked in this order until one is accepted
DETERMINISM_REPEATS = 8
"""Copies of one greedy request sent at once to see whether the target looks deterministic."""
DETERMINISM_TOKENS = 32
_ENDPOINTS: tuple[Endpoint, ...] = ("completions", "chat")


async def generation(s: ProbeSession) -> None:
    """Completions, chat, token ids, logprob depth and streaming, with one prompt per endpoint."""
    c = s.caps
    outputs: dict[str, GenerationResult] = {}
    for endpoint in _ENDPOINTS:
        text = fresh_prompt(24)
        res = GenerationResult(ok=False)
        depth_asked = 0
        for depth in LOGPROB_DEPTHS:
            depth_asked = depth
            res = await s.client.generate(s.request(endpoint, text, top_logprobs=depth))
            if res.ok or res.status != 400:
                break
        if not res.ok:
            res = await s.client.generate(s.request(endpoint, text))
            depth_asked = 0
        outputs[endpoint] = res
        cap = (
            Capability(True, True, f"HTTP 200, {len(res.output_token_ids)} tokens, finish={res.finish_reason}")
            if res.ok else Capability(False, False, f"HTTP {res.status}: {one_line(res.error or '', 160)}")
        )
        setattr(c, endpoint, cap)
        if endpoint == "completions" or not c.completions.available:
            _token_ids_and_logprobs(s, endpoint, res, depth_asked)
        # streaming: same prompt, compared with the non-streamed answer
        sres = await s.client.generate(s.request(endpoint, text, stream=True))
        outputs[f"{endpoint}-stream"] = sres
    _streaming(s, outputs)
    await _determinism(s)


async def _determinism(s: ProbeSession) -> None:
    """The same greedy request DETERMINISM_REPEATS times at once: identical token ids, or not."""
    endpoint: Endpoint | None = next((e for e in _ENDPOINTS if getattr(s.caps, e).available), None)
    if endpoint is None:
        s.caps.deterministic = Capability(None, None, "no generation endpoint answered")
        return
    req = s.request(endpoint, fresh_prompt(24), max_tokens=DETERMINISM_TOKENS)
    results = await asyncio.gather(*(s.client.generate(req) for _ in range(DETERMINISM_REPEATS)))
    ids = [tuple(r.output_token_ids) for r in results if r.ok and r.output_token_ids]
    if len(ids) < 2:
        s.caps.deterministic = Capability(None, None, f"{endpoint}: too few answers with token ids ({len(ids)})")
        return
    distinct = len(set(ids))
    what = f"{endpoint}: {len(ids)} copies of one greedy request sent at once gave {distinct} distinct output(s)"
    if distinct == 1:
        s.caps.deterministic = Capability(True, {"copies": len(ids), "distinct": 1}, what)
    else:
        s.caps.deterministic = Capability(False, {"copies": len(ids), "distinct": distinct},
                                          what + ": outputs are judged against the run's A/A calibration")


def _token_ids_and_logprobs(s: ProbeSession, endpoint: str, res: GenerationResult, depth_asked: int) -> None:
    c = s.caps
    if not res.ok:
        return
    n_out = len(res.output_token_ids)
    c.output_token_ids = Capability(
        n_out > 0, n_out > 0,
        f"{endpoint}: {n_out} output token ids" + ("" if n_out else " (neither token_ids nor token_id: logprob keys)")
        + ("" if res.token_ids_source in (None, "server") else
           f" recovered from token text via /extras/tokenize ({res.token_ids_source}); the server sent none"),
    )
    p = res.prompt_token_ids
    if p is None:
        c.prompt_token_ids = Capability(False, False, f"{endpoint}: no prompt_token_ids in the response")
    else:
        agree = "matching" if len(p) == res.prompt_tokens else f"but usage.prompt_tokens={res.prompt_tokens}"
        c.prompt_token_ids = Capability(len(p) > 0, len(p) > 0, f"{endpoint}: {len(p)} prompt token ids, {agree} usage")
    if not depth_asked:
        c.logprobs = Capability(False, 0, f"{endpoint}: every logprobs depth in {LOGPROB_DEPTHS} was refused")
        return
    depth = min((len(t) for t in res.top_logprobs), default=0)
    chosen_in = all(tok in top for tok, top in zip(res.output_token_ids, res.top_logprobs, strict=False))
    ev = f"{endpoint}: asked {depth_asked}, got {depth} per position keyed by token id"
    if res.token_ids_source not in (None, "server"):
        ev += " (the server keyed them by text; ids from /extras/tokenize)"
    if depth:
        ev += "; chosen token in its top list" if chosen_in else "; chosen token NOT always in its top list"
    else:
        ev += " (no token_id: keys: return_tokens_as_token_ids ignored?)"
    c.logprobs = Capability(depth > 0, depth, ev)


def _streaming(s: ProbeSession, outputs: dict[str, GenerationResult]) -> None:
    parts: list[str] = []
    value: dict[str, bool] = {}
    for endpoint in _ENDPOINTS:
        plain, streamed = outputs[endpoint], outputs[f"{endpoint}-stream"]
        ok = streamed.ok and bool(streamed.output_token_ids) and streamed.ttft_s is not None
        value[endpoint] = ok
        if not streamed.ok:
            parts.append(f"{endpoint}: HTTP {streamed.status} {one_line(streamed.error or '', 80)}")
        elif not ok:
            parts.append(f"{endpoint}: stream carried no tokens")
        else:
            same = "same ids as" if streamed.output_token_ids == plain.output_token_ids else "ids DIFFER from"
            parts.append(f"{endpoint}: {same} non-streamed, ttft {streamed.ttft_s:.3f} s")
    s.caps.streaming = Capability(all(value.values()), value, "; ".join(parts))
