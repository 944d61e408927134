"""Hand-built induction circuit for the embedded tiny model, so leaked context becomes visible.

A random network is context-sensitive but never repeats what it read, so a secret leaked into
another tenant's prompt would change that tenant's output only as noise. This module writes
every weight of a standard `LlamaForCausalLM` so that, next to a chaotic random part, it holds
a two-layer induction circuit keyed on bigrams: after "... A B C ... A B" the model predicts
"C", and then "D", and so on: an earlier span is reproduced once its first two tokens recur.
Matching two tokens rather than one keeps the copying from starting by chance (a random
continuation often emits some context token; it almost never emits a context bigram), so the
model stays chaotically context-sensitive when nothing repeats.

Residual stream layout (hidden = heads * head_dim), every code subspace `code_dim` wide:

- R: the random part: random embeddings, random heads and MLP units that read and write only R,
  and random lm_head rows, as in a plain seeded random model.
- C: a few constant dimensions, identical for every token and large, so that every RMSNorm
  divides by (nearly) the same number: the norms become fixed scales (their weights restore
  each subspace to unit size) and the circuit does not depend on what the random part does.
  C also feeds the constant queries and keys of the positional heads.
- T: a bipolar code u_t (entries +-1/sqrt(code_dim)) of the current token.
- P1, P2: the codes of the tokens 1 and 2 back, written by layer 0 heads 0 and 1. Their queries
  and keys are constant vectors in the highest-frequency rotary pairs, weighted so that
  sum_j w_j cos((m - n - back) theta_j) peaks sharply at distance `back` over 2048 positions.
- HQ, HK: bigram codes bound by the layer 0 MLP: HQ = sqrt(d) * T (.) S P1 (the bigram ending
  here) and HK = sqrt(d) * P1 (.) S P2 (the bigram ending one back), with (.) the elementwise
  product and S a signed permutation (so "A B" and "B A" differ). For bipolar codes the
  product of two bound codes is exactly 1 when both tokens match, and only noise of size
  1/sqrt(d) when one or none does. Products come from pairs of gated units:
  silu(x) * y + silu(-x) * (-y) = x * y exactly.
- N: the code of the predicted token, written by layer 1 head 0 (induction head): query HQ, key
  HK, both in the lowest-frequency rotary pairs (rope_theta is huge, so those barely rotate
  over 2048 positions: the score is content-only), value the attended token's code T.

lm_head row w is [random on R | copy_logit * u_w on N]: a matched copy adds about copy_logit.
Rows of non-word tokens stay zero (the caller zeroes them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

# Weights over the highest-frequency rotary pairs for the positional scores (found by a random
# search maximising, over relative distances 0..2048, the gap between the score at the target
# distance and the best other distance, for rotary frequencies 1e12 ** (-j / 64): about 0.21).
PREV_TOKEN_PAIR_WEIGHTS = (0.39, 0.14, 0.111, 0.103, 0.07, 0.116, 0.069)
SUBSPACES = ("T", "P1", "P2", "HQ", "HK", "N")


@dataclass(frozen=True)
class CircuitSpec:
    """Sizes and gains of the hand-built model; the recipe carries these as plain fields."""

    hidden_size: int = 768
    num_heads: int = 6
    head_dim: int = 128
    intermediate_size: int = 832
    rope_theta: float = 1e12
    const_dims: int = 16
    code_dim: int = 80
    const_value: float = 8.0  # pre-norm value of each C dimension: pins every norm's divisor
    random_scale: float = 0.1  # pre-norm per-dimension scale of the random part R
    random_std: float = 0.2  # std of random read weights (as in the plain random model)
    random_gain: float = 4.0  # each random block adds R of about this size (in R's units)
    prev_score: float = 60.0  # positional score scale (gap to other distances ~ 0.21 x this)
    match_score: float = 10.0  # induction score when the bigram matches
    copy_logit: float = 30.0  # logit added to a copied token
    lm_std: float = 0.2  # std of lm_head rows on R (normalised units)

    @property
    def random_dims(self) -> int:
        return self.hidden_size - self.const_dims - len(SUBSPACES) * self.code_dim

    @property
    def circuit_units(self) -> int:
        """Layer 0 MLP units used for binding: two per product, two products per dimension."""
        return 4 * self.code_dim

    def slices(self) -> dict[str, slice]:
        """Where R, C and each code subspace live in the residual stream."""
        r, c, d = self.random_dims, self.const_dims, self.code_dim
        if r < 64 or self.intermediate_size - self.circuit_units < 64:
            raise ValueError("hidden or intermediate size too small for the circuit")
        out = {"R": slice(0, r), "C": slice(r, r + c)}
        for i, name in enumerate(SUBSPACES):
            out[name] = slice(r + c + i * d, r + c + (i + 1) * d)
        return out

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
        sq += len(SUBSPACES) - 1.0  # the codes, each about unit length (N often less)
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
    if cfg.num_hidden_layers < 2 or cfg.num_key_value_heads != nh or spec.code_dim > hd or nh < 3:
        raise ValueError("the circuit needs >= 2 layers, >= 3 heads, no GQA and code_dim <= head_dim")
    s = spec.slices()
    R, C = s["R"], s["C"]
    nr, d = spec.random_dims, spec.code_dim
    rms = spec.norm_divisor()

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    # Bipolar unit codes for every vocabulary id: bound pairs of them stay exactly unit length.
    codes = (torch.randint(0, 2, (vocab_size, d), generator=gen).float() * 2 - 1) / math.sqrt(d)
    binder = _signed_permutation(d, gen)

    def norm_w(blocks_before: int) -> torch.Tensor:
        """Norm weights that bring every subspace out of a norm at unit scale.

        R grows by about `random_gain` (in its own units) per random block before this norm;
        dividing by the expected size stands in for the normalisation a free RMSNorm would do.
        """
        w = torch.full((H,), rms)  # the codes: pre-norm unit size comes out at unit size
        w[R] = rms / (spec.random_scale * math.sqrt(1 + blocks_before * spec.random_gain**2))
        w[C] = rms / spec.const_value  # C: exactly 1 per dimension
        return w

    read = spec.random_std * math.sqrt(nr)  # size of a random projection of R (per dim)
    silu_mean_sq = 0.5 * read**4  # E[(silu(g) * u)^2] for g, u ~ N(0, read^2), roughly

    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        emb = model.model.embed_tokens.weight
        emb[:, R] = randn(vocab_size, nr) * spec.random_scale
        emb[:, C] = spec.const_value
        emb[:, s["T"]] = codes

        for li, layer in enumerate(model.model.layers):
            layer.input_layernorm.weight.copy_(norm_w(2 * li))
            layer.post_attention_layernorm.weight.copy_(norm_w(2 * li + 1))
            att, mlp = layer.self_attn, layer.mlp
            circuit_heads = 2 if li == 0 else 1 if li == 1 else 0
            units = spec.circuit_units if li == 0 else 0
            # Random heads and units after the circuit's: read R, write R.
            rows = slice(circuit_heads * hd, nh * hd)
            n_rand = (nh - circuit_heads) * hd
            for proj in (att.q_proj, att.k_proj, att.v_proj):
                proj.weight[rows, R] = randn(n_rand, nr) * spec.random_std
            o_std = spec.random_gain * spec.random_scale / (math.sqrt(n_rand) * read)
            att.o_proj.weight[R, rows] = randn(nr, n_rand) * o_std
            n_units = inter - units
            d_std = spec.random_gain * spec.random_scale / math.sqrt(n_units * silu_mean_sq)
            mlp.gate_proj.weight[units:, R] = randn(n_units, nr) * spec.random_std
            mlp.up_proj.weight[units:, R] = randn(n_units, nr) * spec.random_std
            mlp.down_proj.weight[R, units:] = randn(nr, n_units) * d_std
            if li == 0:
                _positional_head(att, 0, 1, spec, C, s["T"], s["P1"])
                _positional_head(att, 1, 2, spec, C, s["T"], s["P2"])
                _bind(mlp, 0, spec, s["T"], s["P1"], s["HQ"], binder)
                _bind(mlp, 2 * d, spec, s["P1"], s["P2"], s["HK"], binder)
            elif li == 1:
                _induction_head(att, spec, s["HQ"], s["HK"], s["T"], s["N"])

        model.model.norm.weight.copy_(norm_w(2 * len(model.model.layers)))
        lm = model.lm_head.weight
        lm[word_ids, R] = randn(len(word_ids), nr) * spec.lm_std
        lm[word_ids, s["N"]] = codes[word_ids] * spec.copy_logit


def _signed_permutation(d: int, gen: Any) -> Any:
    """An exactly orthogonal d x d matrix (a random signed permutation): no floating-point drift."""
    import torch

    perm = torch.randperm(d, generator=gen)
    signs = torch.randint(0, 2, (d,), generator=gen).float() * 2 - 1
    m = torch.zeros(d, d)
    m[torch.arange(d), perm] = signs
    return m


def _positional_head(att: Any, head: int, back: int, spec: CircuitSpec, C: slice, src: slice, dst: slice) -> None:
    """Layer 0 head `head`: attend `back` positions back and copy that token's code into `dst`."""
    import torch

    hd, half = spec.head_dim, spec.head_dim // 2
    ncd = C.stop - C.start
    q = torch.zeros(hd)
    k = torch.zeros(hd)
    for j, w in enumerate(PREV_TOKEN_PAIR_WEIGHTS):
        theta = spec.rope_theta ** (-2 * j / hd)
        a = math.sqrt(w * spec.prev_score * math.sqrt(hd))
        # z_q = a, z_k = a e^{i back theta}: score a^2 cos((m - n - back) theta), peaked at back.
        q[j] = a
        k[j] = a * math.cos(back * theta)
        k[j + half] = a * math.sin(back * theta)
    rows = slice(head * hd, (head + 1) * hd)
    # The normalised C dimensions are exactly 1 each; spread the constant over all of them.
    att.q_proj.weight[rows, C] = (q / ncd)[:, None]
    att.k_proj.weight[rows, C] = (k / ncd)[:, None]
    d = spec.code_dim
    att.v_proj.weight[head * hd : head * hd + d, src] = torch.eye(d)
    att.o_proj.weight[dst, head * hd : head * hd + d] = torch.eye(d)


def _bind(mlp: Any, first: int, spec: CircuitSpec, a: slice, b: slice, out: slice, binder: Any) -> None:
    """MLP units first..first+2d: out = sqrt(d) * a (.) (binder @ b), elementwise and exact.

    Unit pair i computes silu(x) * y + silu(-x) * (-y) = x * y with x = a_i and y = (binder b)_i.
    """
    import torch

    d = spec.code_dim
    eye = torch.eye(d)
    plus, minus = slice(first, first + d), slice(first + d, first + 2 * d)
    mlp.gate_proj.weight[plus, a] = eye
    mlp.gate_proj.weight[minus, a] = -eye
    mlp.up_proj.weight[plus, b] = binder
    mlp.up_proj.weight[minus, b] = -binder
    mlp.down_proj.weight[out, plus] = eye * math.sqrt(d)
    mlp.down_proj.weight[out, minus] = eye * math.sqrt(d)


def _induction_head(att: Any, spec: CircuitSpec, hq: slice, hk: slice, value: slice, out: slice) -> None:
    """Layer 1 head 0: find where the current bigram occurred before; copy the token that followed.

    Query HQ (bigram ending here), key HK (bigram ending one back), in the lowest-frequency
    rotary pairs only, so the score is `match_score` for a matching bigram at any distance.
    """
    import torch

    d = spec.code_dim
    clean = spec.clean_dims()
    g = math.sqrt(spec.match_score * math.sqrt(spec.head_dim))
    eye = torch.eye(d)
    att.q_proj.weight[clean, hq] = eye * g
    att.k_proj.weight[clean, hk] = eye * g
    att.v_proj.weight[:d, value] = eye
    att.o_proj.weight[out, :d] = eye
