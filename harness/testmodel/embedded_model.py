"""Build the embedded server's tiny model: deterministic from a seed, no download.

The model is the oracle's instrument: a float32 Llama-architecture network whose greedy output
depends sharply on its context, a byte-level BPE tokenizer trained locally on the harness's word
pool (so each pool word is one token), a chat template, and two LoRA adapters in PEFT format.
By default its weights are seeded random plus a hand-built induction circuit
(harness/testmodel/induction.py) that reproduces an earlier span once the span's first two tokens
recur, so context leaked into a prompt shows up as visible text; harness/testmodel/sensitivity.py
measures both properties. Everything lands in a cache folder keyed by the build recipe, so a
second build is a no-op.

Needs the `embedded` extra (torch, transformers, tokenizers, safetensors).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from harness.scenario.words import draw_words, word_pool

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from harness.testmodel.induction import CircuitSpec

RECIPE_VERSION = 4
DEFAULT_SEED = 1234
ADAPTER_NAMES = ("adapter-a", "adapter-b")
SPECIAL_TOKENS = ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ ' ' + m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@dataclass(frozen=True)
class ModelRecipe:
    """Everything that determines the built model; its hash names the cache folder."""

    seed: int = DEFAULT_SEED
    hidden_size: int = 768
    intermediate_size: int = 832
    num_layers: int = 2
    num_heads: int = 6
    head_dim: int = 128
    init_std: float = 0.2
    lora_rank: int = 8
    lora_std: float = 0.3
    # The hand-built induction circuit (harness/testmodel/induction.py) and its gains; False gives
    # the plain seeded random model (ModelRecipe.plain() has the sizes it was tuned at).
    induction: bool = True
    rope_theta: float = 1e12
    prev_score: float = 60.0
    code_dim: int = 80
    match_score: float = 10.0
    copy_logit: float = 30.0
    random_gain: float = 4.0
    lm_std: float = 0.2
    version: int = RECIPE_VERSION

    def circuit_spec(self) -> CircuitSpec:
        """The induction circuit's sizes and gains for this recipe."""
        from harness.testmodel.induction import CircuitSpec

        return CircuitSpec(
            hidden_size=self.hidden_size,
            num_heads=self.num_heads,
            head_dim=self.head_dim,
            intermediate_size=self.intermediate_size,
            rope_theta=self.rope_theta,
            random_std=self.init_std,
            prev_score=self.prev_score,
            match_score=self.match_score,
            copy_logit=self.copy_logit,
            random_gain=self.random_gain,
            code_dim=self.code_dim,
            lm_std=self.lm_std,
        )

    def digest(self) -> str:
        """Hash of the recipe and of the builder's source (with the circuit's), so any change rebuilds."""
        h = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode())
        h.update(Path(__file__).read_bytes())
        h.update((Path(__file__).parent / "induction.py").read_bytes())
        return h.hexdigest()[:12]

    @classmethod
    def plain(cls, **kw: object) -> ModelRecipe:
        """The earlier plain random model: no induction circuit, hidden 256, 4 heads of 64."""
        base: dict[str, object] = dict(
            hidden_size=256, num_heads=4, head_dim=64, intermediate_size=512, induction=False, rope_theta=10000.0
        )
        base.update(kw)
        return cls(**base)  # type: ignore[arg-type]


def default_cache_dir() -> Path:
    return Path(__file__).resolve().parents[2] / ".cache" / "embedded-model"


def model_dir_for(recipe: ModelRecipe, cache_dir: Path | None = None) -> Path:
    return (cache_dir or default_cache_dir()) / f"tiny-llama-{recipe.digest()}"


def _train_tokenizer(seed: int) -> Tokenizer:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    rng = random.Random(seed)
    pool = word_pool()
    # Every word appears often; lines are random word sequences.
    lines = [" ".join(pool)] * 4 + [" ".join(draw_words(rng, 40)) for _ in range(400)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=8192,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer=trainer)
    for w in pool:
        ids = tok.encode(" " + w).ids
        if len(ids) != 1:
            raise RuntimeError(f"tokenizer split pool word {w!r} into {len(ids)} tokens")
    return tok


def _save_tokenizer(tok: Tokenizer, out: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]  # transformers: untyped __init__
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        add_bos_token=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 2048
    fast.save_pretrained(out)


def _build_weights(
    recipe: ModelRecipe, vocab_size: int, special_ids: list[int], word_ids: list[int], out: Path
) -> None:
    """Write config and weights: seeded random plus the induction circuit, or plain random."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_layers,
        num_attention_heads=recipe.num_heads,
        num_key_value_heads=recipe.num_heads,
        head_dim=recipe.head_dim,
        max_position_embeddings=2048,
        rope_parameters={"rope_type": "default", "rope_theta": recipe.rope_theta},
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=special_ids[0],
        eos_token_id=special_ids[0],
        dtype="float32",
    )
    torch.manual_seed(recipe.seed)
    # transformers: LlamaForCausalLM's __init__ is untyped, and `.to` is wrapped with torch's signature
    model = LlamaForCausalLM(config).to(torch.float32)  # type: ignore[no-untyped-call, arg-type]
    gen = torch.Generator().manual_seed(recipe.seed)
    with torch.no_grad():
        if recipe.induction:
            from harness.testmodel.induction import install

            install(model, recipe.circuit_spec(), vocab_size, word_ids, gen)
        else:
            for name, p in model.named_parameters():
                if name.endswith("norm.weight"):
                    continue
                p.copy_(torch.randn(p.shape, generator=gen) * recipe.init_std)
        # Only whole pool words are ever the greedy choice (a zero row scores 0, far below the
        # best of a thousand random rows): outputs are readable words that re-tokenize to the
        # same ids in a later turn, and no early end-of-text hides a divergence.
        keep = torch.zeros(vocab_size, dtype=torch.bool)
        keep[word_ids] = True
        model.lm_head.weight[~keep] = 0.0
    model.generation_config.do_sample = False
    model.save_pretrained(out, safe_serialization=True)


def _build_adapter(recipe: ModelRecipe, index: int, model_dir: Path, out: Path) -> None:
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(recipe.seed * 1000 + index + 1)
    h, r = recipe.hidden_size, recipe.lora_rank
    qdim = recipe.num_heads * recipe.head_dim
    shapes = {"q_proj": (qdim, h), "k_proj": (qdim, h), "v_proj": (qdim, h), "o_proj": (h, qdim)}
    tensors = {}
    for layer in range(recipe.num_layers):
        for mod, (dout, din) in shapes.items():
            key = f"base_model.model.model.layers.{layer}.self_attn.{mod}"
            tensors[f"{key}.lora_A.weight"] = (torch.randn(r, din, generator=gen) * recipe.lora_std).contiguous()
            tensors[f"{key}.lora_B.weight"] = (torch.randn(dout, r, generator=gen) * recipe.lora_std).contiguous()
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    config = {
        "base_model_name_or_path": str(model_dir),
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": r,
        "lora_alpha": r,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "target_modules": list(shapes),
        "modules_to_save": None,
        "inference_mode": True,
    }
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))


def build(recipe: ModelRecipe | None = None, cache_dir: Path | None = None, force: bool = False) -> Path:
    """Build (or reuse) the model folder and return its path; adapters live in `<dir>/adapters/`."""
    recipe = recipe or ModelRecipe()
    out = model_dir_for(recipe, cache_dir)
    done = out / "BUILD_OK"
    if done.exists() and not force:
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tok = _train_tokenizer(recipe.seed)
    _save_tokenizer(tok, tmp)
    special_ids = [i for i in (tok.token_to_id(t) for t in SPECIAL_TOKENS) if i is not None]
    if len(special_ids) != len(SPECIAL_TOKENS):
        raise RuntimeError(f"tokenizer lacks one of its special tokens {SPECIAL_TOKENS}")
    word_ids = [tok.encode(" " + w).ids[0] for w in word_pool()]
    _build_weights(recipe, tok.get_vocab_size(), special_ids, word_ids, tmp)
    for i, name in enumerate(ADAPTER_NAMES):
        _build_adapter(recipe, i, out, tmp / "adapters" / name)
    (tmp / "recipe.json").write_text(json.dumps(asdict(recipe), indent=2))
    (tmp / "BUILD_OK").write_text(recipe.digest())
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def adapter_dirs(model_dir: Path) -> dict[str, Path]:
    return {name: model_dir / "adapters" / name for name in ADAPTER_NAMES}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the embedded tiny model (idempotent).")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--no-measure", action="store_true", help="skip the in-process sensitivity figures")
    args = parser.parse_args(argv)
    path = build(cache_dir=args.cache_dir, force=args.force)
    print(path)
    if not args.no_measure:
        # The figures say whether this model can make a leak visible (harness.testmodel.sensitivity).
        from harness.testmodel.sensitivity import in_process

        print(f"sensitivity (in-process): {in_process(path).summary()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
