"""The GLM-130B transformer on one tensor-parallel rank (own torch implementation).

Architecture (SwissArmyTransformer's ``GLM130B`` model, ``--layernorm-order post``):

* word embeddings, vocab-parallel; no position embedding; output logits from the same
  (tied) embedding matrix after a final LayerNorm;
* per layer, DeepNorm with ``alpha = (2 * num_layers) ** 0.5``::

      a = LN1(h);  h = a * alpha + Attention(a)
      m = LN2(h);  h = m * alpha + GeGLU-MLP(m)

* attention: fused qkv (column-parallel, bias) laid out per head as ``[q k v]``; rotary
  embeddings (GPT-NeoX "rotate half", base 10000) over the whole head on 1D position ids,
  with SAT's fp16 rounding of frequencies, angles, cos and sin in every dtype;
  scores ``q k^T / sqrt(head_dim)`` with softmax in fp32; bidirectional over the context
  prefix and causal after it; the output projection is row-parallel;
* MLP: ``dense_h_to_4h`` (column-parallel, 2 x inner) -> ``x1 * gelu(x2)`` -> ``dense_4h_to_h``
  (row-parallel).

As in GLM-130B, the query is divided by ``layer + 1`` before the product and the fp32 scores
multiplied back (it keeps deep layers' fp16 scores from overflowing; done in every dtype).

Checked against the official code (SwissArmyTransformer 0.2.12 through GLM-130B's generation
loop) by tests/test_official_parity.py: fp32 within 1e-4 of the logit range, greedy equal.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from openllm_hub.engines.kv_cache import KVCache
from openllm_hub_glm130b.network.parallel import (
    ColumnParallelLinear,
    RowParallelLinear,
    TPGroup,
    VocabParallelEmbedding,
    WeightStore,
)
from openllm_hub_glm130b.spec import GLMConfig

MASKED = -10000.0  # the fill value GLM-130B uses for masked scores (exp underflows to 0 in fp32)


@dataclass
class Layer:
    ln1_w: torch.Tensor
    ln1_b: torch.Tensor
    qkv: ColumnParallelLinear
    dense: RowParallelLinear
    ln2_w: torch.Tensor
    ln2_b: torch.Tensor
    h_to_4h: ColumnParallelLinear
    four_h_to_h: RowParallelLinear


def rotary_inv_freq(head_dim: int) -> torch.Tensor:
    """GLM-130B's rotary frequencies ``1 / 10000^(2i/D)`` as SAT's RotaryEmbedding holds them:
    computed in fp32, then rounded to fp16 (it does so whatever the model's dtype); returned as
    fp32 holding those fp16 values."""
    half = torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim
    return (1.0 / (10000.0 ** half)).half().float()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class GLMShard:
    """One rank's slice of the model, built from that rank's state dict."""

    def __init__(self, cfg: GLMConfig, state: Mapping[str, torch.Tensor], tp: TPGroup, *, device: torch.device,
                 dtype: torch.dtype, offload_layers: frozenset[int] = frozenset()) -> None:
        cfg.check_world(tp.world)
        self.cfg, self.tp, self.device, self.dtype = cfg, tp, device, dtype
        self.heads = cfg.num_attention_heads // tp.world
        self.head_dim = cfg.head_dim
        self.alpha = (2.0 * cfg.num_layers) ** 0.5
        self.offload_layers = offload_layers

        def vec(key: str) -> torch.Tensor:
            return state[key].to(device=device, dtype=dtype)

        def store(key: str, offload: bool) -> WeightStore:
            scale = state.get(key + "_scale")
            bits = None
            if scale is not None:
                bits = 8 if state[key].shape[1] == _in_features(cfg, key, tp.world) else 4
            return WeightStore(state[key], scale=scale, bits=bits, device=device, dtype=dtype, offload=offload)

        self.embedding = VocabParallelEmbedding(vec("transformer.word_embeddings.weight"), tp)
        self.final_w = vec("transformer.final_layernorm.weight")
        self.final_b = vec("transformer.final_layernorm.bias")
        self.layers: list[Layer] = []
        for n in range(cfg.num_layers):
            p = f"transformer.layers.{n}."
            off = n in offload_layers
            self.layers.append(Layer(
                ln1_w=vec(p + "input_layernorm.weight"), ln1_b=vec(p + "input_layernorm.bias"),
                qkv=ColumnParallelLinear(store(p + "attention.query_key_value.weight", off),
                                         vec(p + "attention.query_key_value.bias")),
                dense=RowParallelLinear(store(p + "attention.dense.weight", off), vec(p + "attention.dense.bias"), tp),
                ln2_w=vec(p + "post_attention_layernorm.weight"), ln2_b=vec(p + "post_attention_layernorm.bias"),
                h_to_4h=ColumnParallelLinear(store(p + "mlp.dense_h_to_4h.weight", off),
                                             vec(p + "mlp.dense_h_to_4h.bias")),
                four_h_to_h=RowParallelLinear(store(p + "mlp.dense_4h_to_h.weight", off),
                                              vec(p + "mlp.dense_4h_to_h.bias"), tp),
            ))
        self.inv_freq = rotary_inv_freq(self.head_dim).to(device)

    # ---- memory accounting (benchmarks, info) ------------------------------------------
    def weight_bytes(self) -> dict[str, int]:
        """Bytes of weights held on the compute device and in CPU memory (offloaded)."""
        dev = cpu = 0
        small = [self.embedding.weight, self.final_w, self.final_b]
        for layer in self.layers:
            small += [layer.ln1_w, layer.ln1_b, layer.ln2_w, layer.ln2_b, layer.qkv.bias, layer.dense.bias,
                      layer.h_to_4h.bias, layer.four_h_to_h.bias]
            for lin in (layer.qkv, layer.dense, layer.h_to_4h, layer.four_h_to_h):
                if lin.weight.offload:
                    cpu += lin.weight.nbytes
                else:
                    dev += lin.weight.nbytes
        dev += sum(t.numel() * t.element_size() for t in small)
        return {"device": dev, "offloaded": cpu}

    # ---- forward ---------------------------------------------------------------------
    def new_cache(self, batch: int) -> KVCache:
        """An empty KV cache for ``batch`` sequences (this rank's heads; no length limit)."""
        return KVCache(self.cfg.num_layers, batch, self.heads, self.head_dim, self.dtype, self.device,
                       min_capacity=16)

    def _rotary(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin ``[B, T, 1, D]`` of the rotary angles, rounded as the official code rounds
        them in every dtype (SAT's RotaryEmbedding works in fp16 whatever the model's dtype): the
        position as fp16, the angle ``position * inv_freq`` rounded to fp16 (an fp32 product of
        two fp16 values is exact, so rounding it once gives fp16 arithmetic's result), cos and
        sin taken of the fp16 tensor, as the official code takes them (torch's fp16 cos/sin, not
        fp32 ones rounded: these differ where a value lies next to the midpoint of two fp16
        numbers). Angles past 1024 radians are thus multiples of 1."""
        pos = positions.to(torch.float16).to(torch.float32)
        freqs = (pos[..., None] * self.inv_freq).half()  # [B, T, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)[:, :, None, :]  # [B, T, 1, D], fp16
        return emb.cos().to(self.dtype), emb.sin().to(self.dtype)

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, cache: KVCache, context: int,
                last_only: bool = True) -> torch.Tensor:
        """Logits (float32, full vocabulary) of the new ``ids`` ``[B, T]`` appended to ``cache``.

        ``context``: how many leading tokens of the whole sequence are attended bidirectionally.
        With ``last_only`` only the last position's logits are computed (``[B, 1, V]``).
        """
        return self.embedding.logits(self.hidden(ids, positions, cache, context, last_only)).float()

    def hidden(self, ids: torch.Tensor, positions: torch.Tensor, cache: KVCache, context: int,
               last_only: bool = False) -> torch.Tensor:
        """The final-LayerNorm outputs ``[B, T, hidden]`` (compute dtype) of the new ``ids``,
        what the tied output layer reads (:meth:`forward`'s logits are these times the word
        embeddings). Every rank holds the whole vectors (the row-parallel outputs are summed
        over the ranks), so rank 0's are the model's."""
        past, t = cache.length, ids.shape[1]
        q_idx = torch.arange(past, past + t, device=self.device)
        k_idx = torch.arange(past + t, device=self.device)
        allowed = (k_idx[None, :] <= q_idx[:, None]) | (k_idx[None, :] < context)  # [T, S]
        cos, sin = self._rotary(positions)
        h = self.embedding(ids)
        for n, layer in enumerate(self.layers):
            h = self._layer(n, layer, h, cos, sin, allowed, cache)
        cache.advance(t)
        if last_only:
            h = h[:, -1:]
        return F.layer_norm(h, (self.cfg.hidden_size,), self.final_w, self.final_b, self.cfg.layernorm_epsilon)

    def forward_rows(self, ids: torch.Tensor, positions: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """One decoding step of several sequences, each a row of a ragged ``cache`` (continuous
        batching): ``ids`` ``[B]`` at position ids ``positions`` ``[B]``, each appended at its
        row's own length; logits ``[B, V]`` (float32).

        A decoded token comes after its sequence's bidirectional context, so it attends to every
        position of its row (the context both ways is the prompt's business, read alone with
        :meth:`forward`); what lies past a row's length is padding, masked with the same -10000
        as any masked score (its probability is exactly 0 in fp32).
        """
        allowed = cache.row_mask()[:, None, None, :]  # [B, 1 (heads), 1 (query), S]
        cos, sin = self._rotary(positions[:, None])
        h = self.embedding(ids[:, None])
        for n, layer in enumerate(self.layers):
            h = self._layer(n, layer, h, cos, sin, allowed, cache, rows=True)
        cache.advance_rows()
        h = F.layer_norm(h, (self.cfg.hidden_size,), self.final_w, self.final_b, self.cfg.layernorm_epsilon)
        return self.embedding.logits(h)[:, 0].float()

    def _layer(self, n: int, layer: Layer, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               allowed: torch.Tensor, cache: KVCache, rows: bool = False) -> torch.Tensor:
        eps, size = self.cfg.layernorm_epsilon, (self.cfg.hidden_size,)
        b, t, _ = h.shape
        a = F.layer_norm(h, size, layer.ln1_w, layer.ln1_b, eps)
        qkv = layer.qkv(a).view(b, t, self.heads, 3 * self.head_dim)
        d = self.head_dim
        q, k, v = qkv[..., :d], qkv[..., d : 2 * d], qkv[..., 2 * d :]  # each [B, T, H, D]
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        append = cache.append_rows if rows else cache.append
        keys, values = append(n, k.transpose(1, 2), v.transpose(1, 2))  # [B, H, S, D]
        # GLM-130B's query-key layer scaling, in every dtype as the official attention does it:
        # q / (sqrt(D) * (layer + 1)) in the compute dtype, scores masked with -10000 in the compute
        # dtype, then in fp32 multiplied back by (layer + 1); softmax in fp32; the probabilities go
        # back to the compute dtype (the official code's .half(): fp16 in fp16 mode).
        coeff = float(n + 1)
        q = q.transpose(1, 2) / (math.sqrt(self.head_dim) * coeff)
        scores = torch.matmul(q, keys.transpose(-1, -2)).masked_fill(~allowed, MASKED)
        probs = torch.softmax(scores.float() * coeff, dim=-1).to(self.dtype)
        ctx = torch.matmul(probs, values).transpose(1, 2).reshape(b, t, self.heads * self.head_dim)
        h = a * self.alpha + layer.dense(ctx)
        m = F.layer_norm(h, size, layer.ln2_w, layer.ln2_b, eps)
        x1, x2 = layer.h_to_4h(m).chunk(2, dim=-1)
        out: torch.Tensor = m * self.alpha + layer.four_h_to_h(x1 * F.gelu(x2))
        return out


def _in_features(cfg: GLMConfig, key: str, world: int) -> int:
    """Input features of a linear layer's local weight (row-parallel ones are split)."""
    if key.endswith("attention.dense.weight"):
        return cfg.hidden_size // world
    if key.endswith("mlp.dense_4h_to_h.weight"):
        return cfg.inner_hidden_size // world
    return cfg.hidden_size
