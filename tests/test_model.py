"""The embedded tiny model: deterministic build, one token per pool word, PEFT adapters, and
context sensitivity (the oracle can only see a leak that changes output tokens).

The figures are measured in-process with transformers (fast) and once through the real
embedded vLLM server, which must also compute the same greedy tokens as transformers.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from harness.scenario.words import word_pool
from harness.testmodel import sensitivity as sn
from harness.testmodel.embedded_model import ADAPTER_NAMES, SPECIAL_TOKENS, ModelRecipe, adapter_dirs, build

SERVER_TRIALS = 20


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return build()


@pytest.fixture(scope="module")
def local_gen(model_dir: Path) -> sn.TransformersGenerator:
    return sn.TransformersGenerator(model_dir)


@pytest.fixture(scope="module")
def words(local_gen: sn.TransformersGenerator) -> list[int]:
    return sn.word_token_ids(local_gen.tokenizer)


def _assert_figures(report: sn.SensitivityReport, copies: bool) -> None:
    t = report.trials
    assert report.distinct >= sn.MIN_DISTINCT_FRACTION * t, report.summary()
    assert report.one_token_fraction >= sn.MIN_ONE_TOKEN_FRACTION, report.summary()
    assert set(report.adapter_fractions) == set(ADAPTER_NAMES)
    for name, frac in report.adapter_fractions.items():
        assert frac >= sn.MIN_ADAPTER_FRACTION, f"{name}: {report.summary()}"
    assert report.meets_requirements
    if copies:
        assert report.copy_fraction is not None and report.copy_fraction >= sn.TARGET_COPY_FRACTION, report.summary()


def test_sensitivity_in_process(local_gen: sn.TransformersGenerator, words: list[int]) -> None:
    report = sn.measure(local_gen, words, trials=sn.DEFAULT_TRIALS)
    _assert_figures(report, copies=ModelRecipe().induction)


def test_every_pool_word_is_one_token(local_gen: sn.TransformersGenerator, words: list[int]) -> None:
    tok = local_gen.tokenizer
    assert len(set(words)) == len(word_pool())
    special = set(tok.convert_tokens_to_ids(SPECIAL_TOKENS))
    assert not special & set(words)
    # A whole sentence of pool words is one token per word, and decodes back to itself.
    sentence = " " + " ".join(word_pool()[:200])
    ids = tok.encode(sentence, add_special_tokens=False)
    assert ids == words[:200]
    assert tok.decode(ids) == sentence


def test_non_word_lm_head_rows_are_zero(model_dir: Path, words: list[int]) -> None:
    """Greedy output can only ever be whole pool words (no end-of-text, no word fragments)."""
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        lm = f.get_tensor("lm_head.weight")
    mask = lm.abs().sum(dim=1) > 0
    assert set(mask.nonzero().flatten().tolist()) == set(words)


def test_build_is_deterministic(tmp_path: Path) -> None:
    a = build(cache_dir=tmp_path / "a")
    b = build(cache_dir=tmp_path / "b")
    assert a.name == b.name
    for rel in ["model.safetensors", "tokenizer.json", "config.json"] + [
        f"adapters/{n}/adapter_model.safetensors" for n in ADAPTER_NAMES
    ]:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_adapters_are_peft_lora(model_dir: Path) -> None:
    from safetensors import safe_open

    recipe = ModelRecipe()
    h, r = recipe.hidden_size, recipe.lora_rank
    qdim = recipe.num_heads * recipe.head_dim
    shapes = {"q_proj": (qdim, h), "k_proj": (qdim, h), "v_proj": (qdim, h), "o_proj": (h, qdim)}
    dirs = adapter_dirs(model_dir)
    assert set(dirs) == set(ADAPTER_NAMES)
    tensors: dict[str, dict] = {}
    for name, path in dirs.items():
        cfg = json.loads((path / "adapter_config.json").read_text())
        assert cfg["peft_type"] == "LORA" and cfg["task_type"] == "CAUSAL_LM"
        assert cfg["r"] == r and sorted(cfg["target_modules"]) == sorted(shapes)
        with safe_open(str(path / "adapter_model.safetensors"), "pt") as f:
            tensors[name] = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118  (safe_open has keys() but is not iterable)
        expected = set()
        for layer in range(recipe.num_layers):
            for mod, (dout, din) in shapes.items():
                key = f"base_model.model.model.layers.{layer}.self_attn.{mod}"
                expected |= {f"{key}.lora_A.weight", f"{key}.lora_B.weight"}
                assert tuple(tensors[name][f"{key}.lora_A.weight"].shape) == (r, din)
                assert tuple(tensors[name][f"{key}.lora_B.weight"].shape) == (dout, r)
        assert set(tensors[name]) == expected
    a, b = (tensors[n] for n in ADAPTER_NAMES)
    assert any(not a[k].equal(b[k]) for k in a), "the two adapters must differ"


@pytest.mark.integration
def test_sensitivity_through_server(embedded_url: str, local_gen: sn.TransformersGenerator, words: list[int]) -> None:
    """The served model is the built one (same greedy tokens) and is as context-sensitive."""
    server = sn.ServerGenerator(embedded_url)
    try:
        rng = random.Random(11)
        prompts = [[rng.choice(words) for _ in range(64)] for _ in range(6)]
        for model in (sn.BASE_MODEL, *ADAPTER_NAMES):
            assert server(prompts, model, 16) == local_gen(prompts, model, 16), model
        report = sn.measure(server, words, trials=SERVER_TRIALS)
    finally:
        server.close()
    _assert_figures(report, copies=ModelRecipe().induction)
