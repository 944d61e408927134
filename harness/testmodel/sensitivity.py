"""Measure how sharply the embedded model's greedy output depends on its context.

The oracle can only see a leak that changes output tokens, so the tiny model must be chaotically
context-sensitive: different prompts give different continuations, one changed token changes
the continuation, each LoRA adapter answers differently from the base model, and (optionally)
the model copies a span it saw earlier in its context, so that leaked context becomes visible
text. `measure(gen)` computes those figures through a pluggable `Generator`, so the same numbers
can be taken in-process with transformers (fast, for tests and builds) and through a real
server with token-id prompts (to show the server computes the same model).

CLI: `python -m harness.testmodel.sensitivity [--server URL] [--trials N]`.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.scenario.words import word_pool

BASE_MODEL = "tiny-llama"
ADAPTERS = ("adapter-a", "adapter-b")
DEFAULT_TRIALS = 50
DEFAULT_SEED = 7
PROMPT_TOKENS = 64
CONTINUATION_TOKENS = 16
CHANGE_WINDOW = 32
SPAN_TOKENS = 8
SPAN_CUE = 2

# Thresholds for the required figures (a)-(c) and the target for the optional copy figure (d).
MIN_DISTINCT_FRACTION = 0.9  # 45 of 50
MIN_ONE_TOKEN_FRACTION = 0.8
MIN_ADAPTER_FRACTION = 0.8
TARGET_COPY_FRACTION = 0.8

Generator = Callable[[Sequence[Sequence[int]], str, int], list[list[int]]]
"""`gen(prompts, model, max_tokens)`: greedy continuations (token ids) of token-id prompts.

`model` is the served name: BASE_MODEL or an adapter name from ADAPTERS.
"""


@dataclass
class SensitivityReport:
    """The measured figures; fractions are over `trials` trials."""

    trials: int
    distinct: int  # (a) distinct continuations over `trials` random prompts
    one_token_fraction: float  # (b) one changed token among the last 32 changes the output
    adapter_fractions: dict[str, float]  # (c) per adapter: continuation differs from base
    copy_fraction: float | None = None  # (d) reproduces the rest of an earlier 8-token span
    adapter_copy_fractions: dict[str, float] = field(default_factory=dict)

    @property
    def meets_requirements(self) -> bool:
        """True when the required figures (a)-(c) hold; (d) is reported, not required."""
        return (
            self.distinct >= MIN_DISTINCT_FRACTION * self.trials
            and self.one_token_fraction >= MIN_ONE_TOKEN_FRACTION
            and all(f >= MIN_ADAPTER_FRACTION for f in self.adapter_fractions.values())
        )

    @property
    def copies(self) -> bool:
        """True when the model reproduces leaked spans often enough (figure (d) on target)."""
        return self.copy_fraction is not None and self.copy_fraction >= TARGET_COPY_FRACTION

    def summary(self) -> str:
        """One line with every figure."""
        ad = " ".join(f"{k}={v:.2f}" for k, v in self.adapter_fractions.items())
        line = (
            f"distinct={self.distinct}/{self.trials} one-token={self.one_token_fraction:.2f} "
            f"adapters-differ[{ad}]"
        )
        if self.copy_fraction is not None:
            line += f" copy={self.copy_fraction:.2f}"
        if self.adapter_copy_fractions:
            line += " adapter-copy[" + " ".join(f"{k}={v:.2f}" for k, v in self.adapter_copy_fractions.items()) + "]"
        line += " (meets a-c)" if self.meets_requirements else " (FAILS a-c)"
        return line


def word_token_ids(tokenizer: Any) -> list[int]:
    """The token id of each " word" of the pool, in pool order (each is exactly one token)."""
    ids = []
    for w in word_pool():
        enc = tokenizer.encode(" " + w, add_special_tokens=False)
        if len(enc) != 1:
            raise ValueError(f"pool word {w!r} is {len(enc)} tokens, expected 1")
        ids.append(enc[0])
    return ids


def _prompt(rng: random.Random, words: Sequence[int], n: int) -> list[int]:
    return [words[rng.randrange(len(words))] for _ in range(n)]


def _copy_prompt(rng: random.Random, words: Sequence[int], n: int) -> tuple[list[int], list[int]]:
    """A prompt of n tokens holding an 8-token span at a random place and its first 2 at the end.

    The span's tokens are distinct and appear nowhere else in the prompt, so the only way to
    continue with the rest of the span is to have copied it from the context.
    """
    span = rng.sample(list(words), SPAN_TOKENS)
    others = [w for w in words if w not in set(span)]
    start = rng.randrange(4, n - SPAN_TOKENS - SPAN_CUE - 8)
    body = [others[rng.randrange(len(others))] for _ in range(n - SPAN_TOKENS - SPAN_CUE)]
    prompt = body[:start] + span + body[start:] + span[:SPAN_CUE]
    return prompt, span[SPAN_CUE:]


def measure(
    gen: Generator,
    words: Sequence[int],
    *,
    trials: int = DEFAULT_TRIALS,
    seed: int = DEFAULT_SEED,
    adapters: Sequence[str] = ADAPTERS,
    copy: bool = True,
    adapter_copy: bool = False,
) -> SensitivityReport:
    """Measure figures (a)-(d) with `trials` trials each; `words` are the pool's token ids."""
    rng = random.Random(seed)
    n, k = PROMPT_TOKENS, CONTINUATION_TOKENS
    prompts = [_prompt(rng, words, n) for _ in range(trials)]
    variants = []
    for p in prompts:
        q = list(p)
        pos = rng.randrange(n - CHANGE_WINDOW, n)
        q[pos] = rng.choice([w for w in words if w != p[pos]])
        variants.append(q)
    base = gen(prompts + variants, BASE_MODEL, k)
    outs, changed = base[:trials], base[trials:]
    distinct = len({tuple(o) for o in outs})
    one_token = sum(a != b for a, b in zip(outs, changed, strict=False)) / trials
    adapter_fractions = {}
    for name in adapters:
        ad = gen(prompts, name, k)
        adapter_fractions[name] = sum(a != b for a, b in zip(outs, ad, strict=False)) / trials
    report = SensitivityReport(trials, distinct, one_token, adapter_fractions)
    if copy:
        cases = [_copy_prompt(rng, words, n) for _ in range(trials)]
        cprompts = [c[0] for c in cases]
        report.copy_fraction = _copied(gen(cprompts, BASE_MODEL, SPAN_TOKENS - SPAN_CUE), cases)
        if adapter_copy:
            for name in adapters:
                report.adapter_copy_fractions[name] = _copied(gen(cprompts, name, SPAN_TOKENS - SPAN_CUE), cases)
    return report


def _copied(outs: list[list[int]], cases: list[tuple[list[int], list[int]]]) -> float:
    return sum(o[: len(rest)] == rest for o, (_, rest) in zip(outs, cases, strict=False)) / len(cases)


# --- generators ------------------------------------------------------------------------------


class TransformersGenerator:
    """Greedy decoding in-process with transformers; adapters are merged into weight copies.

    LoRA is merged by hand (W + alpha/r * B @ A) so no PEFT install is needed; the server test
    shows vLLM's own LoRA path gives the same continuations.
    """

    def __init__(self, model_dir: Path, threads: int = 2) -> None:
        import torch
        from transformers import AutoTokenizer, LlamaForCausalLM

        torch.set_num_threads(threads)
        self.model_dir = Path(model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        base = LlamaForCausalLM.from_pretrained(self.model_dir).eval()  # type: ignore[no-untyped-call]  # transformers: untyped eval()
        self.models: dict[str, Any] = {BASE_MODEL: base}

    def _model(self, name: str) -> Any:
        if name not in self.models:
            self.models[name] = merge_lora(self.models[BASE_MODEL], self.model_dir / "adapters" / name)
        return self.models[name]

    def __call__(self, prompts: Sequence[Sequence[int]], model: str, max_tokens: int) -> list[list[int]]:
        import torch

        m = self._model(model)
        out: list[list[int]] = [[] for _ in prompts]
        by_len: dict[int, list[int]] = {}
        for i, p in enumerate(prompts):
            by_len.setdefault(len(p), []).append(i)
        with torch.inference_mode():
            for idx in by_len.values():
                ids = torch.tensor([list(prompts[i]) for i in idx], dtype=torch.long)
                for i, row in zip(idx, greedy(m, ids, max_tokens).tolist(), strict=False):
                    out[i] = row
        return out


def greedy(model: Any, ids: Any, max_tokens: int) -> Any:
    """Batched greedy continuation of equal-length prompts with a KV cache; no early stop."""
    import torch

    res = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    past = res.past_key_values
    nxt = res.logits[:, -1].argmax(-1)
    toks = [nxt]
    for _ in range(max_tokens - 1):
        res = model(input_ids=nxt[:, None], past_key_values=past, use_cache=True)
        past = res.past_key_values
        nxt = res.logits[:, -1].argmax(-1)
        toks.append(nxt)
    return torch.stack(toks, dim=1)


def merge_lora(base: Any, adapter_dir: Path) -> Any:
    """A copy of `base` with the PEFT LoRA adapter in `adapter_dir` merged into its weights."""
    import copy
    import json

    import torch
    from safetensors.torch import load_file

    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    scale = cfg["lora_alpha"] / cfg["r"]
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    merged = copy.deepcopy(base)
    params = dict(merged.named_parameters())
    with torch.no_grad():
        for key, a in tensors.items():
            if not key.endswith(".lora_A.weight"):
                continue
            prefix = key[: -len(".lora_A.weight")]
            b = tensors[prefix + ".lora_B.weight"]
            target = prefix.removeprefix("base_model.model.") + ".weight"
            params[target] += scale * (b @ a)
    return merged


class ServerGenerator:
    """Greedy decoding through an OpenAI-compatible server's /v1/completions with token-id prompts."""

    def __init__(self, base_url: str, concurrency: int = 8, timeout_s: float = 120.0) -> None:
        import httpx

        self.base_url = base_url.rstrip("/")
        self.concurrency = concurrency
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def one(self, prompt: Sequence[int], model: str, max_tokens: int) -> list[int]:
        """The greedy continuation of one token-id prompt (`ignore_eos`: always max_tokens)."""
        import httpx

        body = {
            "model": model,
            "prompt": list(prompt),
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "ignore_eos": True,
            "return_token_ids": True,
        }
        for attempt in range(3):
            try:
                resp = self._http.post("/v1/completions", json=body)
                break
            except (httpx.RemoteProtocolError, httpx.ConnectError, httpx.ReadError):
                # A pooled keep-alive connection the server closed while idle: greedy requests
                # are idempotent, so send again on a fresh connection.
                if attempt == 2:
                    raise
        if resp.status_code != 200:
            raise RuntimeError(f"{model}: HTTP {resp.status_code}: {resp.text[:500]}")
        ids = resp.json()["choices"][0].get("token_ids")
        if ids is None:
            raise RuntimeError("server returned no token_ids (needs vLLM's return_token_ids)")
        return list(ids)

    def __call__(self, prompts: Sequence[Sequence[int]], model: str, max_tokens: int) -> list[list[int]]:
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(lambda p: self.one(p, model, max_tokens), prompts))


def in_process(model_dir: Path | None = None, trials: int = DEFAULT_TRIALS, **kw: Any) -> SensitivityReport:
    """Measure the (built) embedded model in-process with transformers."""
    if model_dir is None:
        from harness.testmodel.embedded_model import build

        model_dir = build()
    gen = TransformersGenerator(model_dir)
    return measure(gen, word_token_ids(gen.tokenizer), trials=trials, **kw)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Measure the embedded model's context sensitivity.")
    parser.add_argument("--server", default=None, help="measure through this server (base URL) instead of in-process")
    parser.add_argument("--model-dir", type=Path, default=None, help="model folder (default: build the embedded model)")
    parser.add_argument("--trials", type=int, default=DEFAULT_TRIALS)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--adapter-copy", action="store_true", help="also measure copying through each adapter")
    args = parser.parse_args(argv)
    model_dir = args.model_dir
    if model_dir is None:
        from harness.testmodel.embedded_model import build

        model_dir = build()
    from transformers import AutoTokenizer

    words = word_token_ids(AutoTokenizer.from_pretrained(model_dir))
    if args.server:
        gen: Any = ServerGenerator(args.server)
        where = args.server
    else:
        gen = TransformersGenerator(model_dir)
        where = "in-process (transformers)"
    report = measure(gen, words, trials=args.trials, seed=args.seed, adapter_copy=args.adapter_copy)
    print(f"{where}: {report.summary()}")
    for k, v in asdict(report).items():
        print(f"  {k}: {v}")
    return 0 if report.meets_requirements else 1


if __name__ == "__main__":
    sys.exit(main())
