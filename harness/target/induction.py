"""Hand-built induction circuit for the embedded tiny model, so leaked context becomes visible.

A random network is context-sensitive but never repeats what it read, so a secret leaked into
another tenant's prompt would change that tenant's output only as noise. This module writes the
weights of a standard `LlamaForCausalLM` so that, besides a chaotic random part, it holds a
two-layer induction circuit: after "... A B ... A" the model predicts "B", so an earlier span
is reproduced once its first tokens recur.

Residual stream layout (hidden = heads * head_dim):

- R: the random "chaotic" part (random embeddings, random heads and MLPs that read and write R
  only, random lm_head rows), as in a plain seeded random model.
- C: a few constant dimensions, identical for every token and large, so that every RMSNorm
  divides by (nearly) the same number: the norms become fixed scales and the circuit's logits
  do not depend on what the random part does. C also feeds the constant query and key of
  the previous-token head.
- T: a unit code u_t of the current token (random, per vocabulary id).
- P: the previous token's code, written by layer 0 head 0 (previous-token head). Its query and
  key are constant vectors in the highest-frequency rotary pairs, weighted so that the score
  sum_j w_j cos((m - n - 1) theta_j) peaks sharply at relative distance 1 over 2048 positions.
- N: the code of the predicted next token, written by layer 1 head 0 (induction head), whose
  query is the current code T and key the previous-token code P, in the lowest-frequency
  rotary pairs (rope_theta is huge, so those pairs barely rotate over 2048 positions: the score
  is content-only), and whose value is the attended token's code T.

lm_head row w is [random | beta * u_w on N], so a matched copy adds about beta to its logit.
Rows of non-word tokens stay zero (the caller zeroes them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

# Weights over the highest-frequency rotary pairs for the previous-token score (found by a
# random search maximising, over relative distances 0..2048, the gap between the score at
# distance 1 and the best other distance, for head_dim 128 and rope_theta 1e12: about 0.21).
PREV_TOKEN_PAIR_WEIGHTS = (0.39, 0.14, 0.111, 0.103, 0.07, 0.116, 0.069)


@dataclass(frozen=True)
class CircuitSpec:
    """Sizes and gains of the hand-built model; the recipe carries one of these as plain fields."""

    hidden_size: int = 512
    num_heads: int = 4
    head_dim: int = 128
    intermediate_size: int = 512
    rope_theta: float = 1e12
    const_dims: int = 16
    code_dim: int = 80
    const_value: float = 8.0  # pre-norm value of each C dimension: pins every norm's divisor
    random_scale: float = 0.1  # pre-norm per-dimension scale of the random part R
    random_std: float = 0.2  # std of random read weights (as in the plain random model)
    random_gain: float = 1.0  # each random block adds R of about this normalised size
    prev_score: float = 60.0  # previous-token score scale (gap to other distances ~ 0.21 x this)
    match_score: float = 14.0  # induction score of an exact code match
    copy_logit: float = 30.0  # logit added to a copied token
    lm_std: float = 0.2  # std of lm_head rows on R (normalised units)

    @property
    def random_dims(self) -> int:
        return self.hidden_size - self.const_dims - 3 * self.code_dim

    def slices(self) -> dict[str, slice]:
        r, c, d = self.random_dims, self.const_dims, self.code_dim
        if r < 64:
            raise ValueError("hidden size too small for the circuit's subspaces")
        return {
            "R": slice(0, r),
            "C": slice(r, r + c),
            "T": slice(r + c, r + c + d),
            "P": slice(r + c + d, r + c + 2 * d),
            "N": slice(r + c + 2 * d, r + c + 3 * d),
        }

    def clean_dims(self) -> list[int]:
        """Head dimensions of the `code_dim / 2` lowest-frequency rotary pairs (neox layout)."""
        half = self.head_dim // 2
        pairs = list(range(half - self.code_dim // 2, half))
        worst = self.rope_theta ** (-2 * pairs[0] / self.head_dim) * 2048
        if worst > 0.1:
            raise ValueError(f"rope_theta too small: the induction pairs rotate {worst:.2f} rad over 2048 positions")
        return pairs + [p + half for p in pairs]

    def norm_divisor(self) -> float:
        """The (nearly constant) RMS of the pre-norm residual stream, dominated by C."""
        sq = self.const_dims * self.const_value**2
        sq += self.random_dims * self.random_scale**2 * (1 + 2 * self.random_gain**2)
        sq += 3.0  # T, P and N codes, each about unit length
        return math.sqrt(sq / self.hidden_size)


def install(model: Any, spec: CircuitSpec, vocab_size: int, word_ids: list[int], gen: Any) -> None:
    """Overwrite every weight of `model` (a LlamaForCausalLM built from `spec`) with the circuit.

    `gen` is a seeded torch.Generator: the result is a pure function of its seed and `spec`.
    """
    import torch

    cfg = model.config
    H, hd, nh, inter = spec.hidden_size, spec.head_dim, spec.num_heads, spec.intermediate_size
    if (cfg.hidden_size, cfg.head_dim, cfg.num_attention_heads, cfg.intermediate_size) != (H, hd, nh, inter):
        raise ValueError("model config does not match the circuit spec")
    if cfg.num_hidden_layers < 2 or cfg.num_key_value_heads != nh or spec.code_dim > hd:
        raise ValueError("the circuit needs >= 2 layers, no GQA and code_dim <= head_dim")
    s = spec.slices()
    R, C, T, P, N = (s[k] for k in "RCTPN")
    nr = spec.random_dims
    rms = spec.norm_divisor()
    sqrt_hd = math.sqrt(hd)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    # Unit codes for every vocabulary id.
    codes = randn(vocab_size, spec.code_dim)
    codes /= codes.norm(dim=1, keepdim=True)

    def norm_w(blocks_before: int) -> torch.Tensor:
        """Norm weights that bring every subspace out of a norm at unit scale.

        R grows by about `random_gain` (in its own units) per random block before this norm;
        dividing by the expected size stands in for the normalisation a free RMSNorm would do.
        """
        w = torch.ones(H)
        w[R] = rms / (spec.random_scale * math.sqrt(1 + blocks_before * spec.random_gain**2))
        w[C] = rms / spec.const_value  # C: exactly 1 per dimension
        w[T] = rms  # T, P, N: the codes at unit length
        w[P] = rms
        w[N] = rms
        return w

    # Gains that make each random block add about `random_gain` (normalised) to R.
    read = spec.random_std * math.sqrt(nr)  # size of a random projection of R (per dim)
    rand_heads = nh - 1
    # Each block reads a normalised R but writes pre-norm R, whose size grows block by block.
    o_std = spec.random_gain * spec.random_scale / (math.sqrt(rand_heads * hd) * read)
    silu_mean_sq = 0.5 * read**4  # E[(silu(g) * u)^2] for g, u ~ N(0, read^2), roughly
    d_std = spec.random_gain * spec.random_scale / math.sqrt(inter * silu_mean_sq)

    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        emb = model.model.embed_tokens.weight
        emb[:, R] = randn(vocab_size, nr) * spec.random_scale
        emb[:, C] = spec.const_value
        emb[:, T] = codes

        for li, layer in enumerate(model.model.layers):
            layer.input_layernorm.weight.copy_(norm_w(2 * li))
            layer.post_attention_layernorm.weight.copy_(norm_w(2 * li + 1))
            att, mlp = layer.self_attn, layer.mlp
            # Random heads 1..nh-1: read R, write R.
            rows = slice(hd, nh * hd)
            for proj in (att.q_proj, att.k_proj, att.v_proj):
                proj.weight[rows, R] = randn(rand_heads * hd, nr) * spec.random_std
            att.o_proj.weight[R, rows] = randn(nr, rand_heads * hd) * o_std
            mlp.gate_proj.weight[:, R] = randn(inter, nr) * spec.random_std
            mlp.up_proj.weight[:, R] = randn(inter, nr) * spec.random_std
            mlp.down_proj.weight[R, :] = randn(nr, inter) * d_std
            if li == 0:
                _previous_token_head(att, spec, C, T, P, sqrt_hd)
            elif li == 1:
                _induction_head(att, spec, T, P, N, sqrt_hd)

        model.model.norm.weight.copy_(norm_w(2 * len(model.model.layers)))
        lm = model.lm_head.weight
        lm[word_ids, R] = randn(len(word_ids), nr) * spec.lm_std
        lm[word_ids, N] = codes[word_ids] * spec.copy_logit


def _previous_token_head(att: Any, spec: CircuitSpec, C: slice, T: slice, P: slice, sqrt_hd: float) -> None:
    """Head 0 of layer 0: attend to the previous position, copy its token code into P."""
    import torch

    hd, half = spec.head_dim, spec.head_dim // 2
    ncd = C.stop - C.start
    q = torch.zeros(hd)
    k = torch.zeros(hd)
    for j, w in enumerate(PREV_TOKEN_PAIR_WEIGHTS):
        theta = spec.rope_theta ** (-2 * j / hd)
        a = math.sqrt(w * spec.prev_score * sqrt_hd)
        q[j] = a  # z_q = a, z_k = a e^{i theta}: score a^2 cos((m - n - 1) theta)
        k[j] = a * math.cos(theta)
        k[j + half] = a * math.sin(theta)
    # The normalised C dimensions are exactly 1 each; spread the constant over all of them.
    att.q_proj.weight[:hd, C] = (q / ncd)[:, None]
    att.k_proj.weight[:hd, C] = (k / ncd)[:, None]
    d = spec.code_dim
    att.v_proj.weight[:d, T] = torch.eye(d)
    att.o_proj.weight[P, :d] = torch.eye(d)


def _induction_head(att: Any, spec: CircuitSpec, T: slice, P: slice, N: slice, sqrt_hd: float) -> None:
    """Head 0 of layer 1: find where the previous token equals the current one; copy what followed."""
    import torch

    d = spec.code_dim
    clean = spec.clean_dims()
    g = math.sqrt(spec.match_score * sqrt_hd)
    eye = torch.eye(d)
    att.q_proj.weight[clean, T] = eye * g
    att.k_proj.weight[clean, P] = eye * g
    att.v_proj.weight[:d, T] = eye
    att.o_proj.weight[N, :d] = eye
