"""ChatGLM-6B (v1) network: GLM blocks as the released ``modeling_chatglm.py`` computes them.

Facts reproduced from the reference code:

* Block: ``a = LN1(x); h = a * alpha + attn(a); m = LN2(h); out = m * alpha + mlp(m)`` with
  ``alpha = sqrt(2 * 28)``: the *normalised* input is the residual, scaled (the reference's
  block takes ``num_layers`` from a default of 28 that its model never overrides).
* Fused ``query_key_value`` (with bias) laid out per head: ``[q | k | v]`` of ``head_dim``
  each, head after head.
* 2D rotary: each head splits into two halves of ``head_dim / 2``; the first half is rotated
  by the position id, the second by the block position id, each with the "rotate half"
  convention (``x * cos + cat(-x2, x1) * sin``) and ``inv_freq`` rounded to float16 (the
  reference builds it with ``.half()``). In float16 the reference also multiplies positions
  by frequencies in float16; that rounding is reproduced when running in float16.
* GELU with the tanh approximation; attention scale ``1/sqrt(head_dim)`` (the reference's
  division by and multiplication with ``layer_id + 1`` cancels).
* Attention mask: tokens before the context end (the first ``<sop>``) see each other both
  ways; from there on attention is causal.

:meth:`GLM1Network.forward_rows` decodes one generated token for each of several sequences at
once (continuous batching), the rows of a ragged KV cache, each at its own 2D position.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from openllm_hub.engines.kv_cache import KVCache
from openllm_hub_chatglm.network.common import (
    GLMNetwork,
    QuantPlan,
    attention,
    cached_keys_values,
    causal_mask,
    embed,
    make_embedding,
)
from openllm_hub_chatglm.spec import GLMSpec


class RotaryTable2D:
    """cos/sin tables (n, head_dim/2) of one half-head rotary, grown on demand."""

    def __init__(self, half_dim: int, dtype: torch.dtype, device: torch.device) -> None:
        self.dim, self.dtype, self.device = half_dim, dtype, device
        inv = 1.0 / (10000 ** (torch.arange(0, half_dim, 2, dtype=torch.float32) / half_dim))
        self.inv_freq = inv.half().float().to(device)  # the reference stores inv_freq in float16
        self.cos = self.sin = torch.empty(0)

    def get(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        need = int(positions.max()) + 1
        if self.cos.shape[0] < need:
            n = max(need, 2 * self.cos.shape[0], 256)
            freqs = torch.outer(torch.arange(n, dtype=torch.float32, device=self.device), self.inv_freq)
            if self.dtype == torch.float16:
                # the reference's float16 product (a product of two float16 values is exact in
                # float32, so rounding it once equals float16 arithmetic) and float16 cos/sin
                freqs = freqs.half()
            emb = torch.cat((freqs, freqs), dim=-1)
            self.cos, self.sin = emb.cos().to(self.dtype), emb.sin().to(self.dtype)
        return self.cos[positions], self.sin[positions]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos[:, None, :] + _rotate_half(x) * sin[:, None, :]


class SelfAttention(nn.Module):
    def __init__(self, net: GLMNetwork, prefix: str) -> None:
        super().__init__()
        s = net.spec
        self.heads, self.d = s.num_heads, s.head_dim
        inner = s.num_heads * s.head_dim
        self.query_key_value = net.layer_linear(f"{prefix}.query_key_value", s.hidden_size, 3 * inner, True)
        self.dense = net.layer_linear(f"{prefix}.dense", inner, s.hidden_size, True)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, ...], layer: int, cache: KVCache | None,
                past: int, prefix: int) -> torch.Tensor:
        t = x.shape[0]
        q, k, v = self.query_key_value(x).view(t, self.heads, 3 * self.d).chunk(3, dim=-1)
        cos_p, sin_p, cos_b, sin_b = rope
        half = self.d // 2
        q = torch.cat((_rotary(q[..., :half], cos_p, sin_p), _rotary(q[..., half:], cos_b, sin_b)), dim=-1)
        k = torch.cat((_rotary(k[..., :half], cos_p, sin_p), _rotary(k[..., half:], cos_b, sin_b)), dim=-1)
        k, v = cached_keys_values(cache, layer, k, v.contiguous())
        mask = causal_mask(past, t, x.device, prefix)
        return self.dense(attention(q, k, v, mask, causal=False))  # type: ignore[no-any-return]

    def forward_rows(self, x: torch.Tensor, rope: tuple[torch.Tensor, ...], layer: int, cache: KVCache,
                     mask: torch.Tensor) -> torch.Tensor:
        """One new token per sequence, ``x`` (rows, hidden): each row of the ragged ``cache``
        attends to its own positions (``mask`` from ``KVCache.row_mask``; a generated token
        sees every earlier one, as in the single path)."""
        b = x.shape[0]
        q, k, v = self.query_key_value(x).view(b, self.heads, 3 * self.d).chunk(3, dim=-1)
        cos_p, sin_p, cos_b, sin_b = rope
        half = self.d // 2
        q = torch.cat((_rotary(q[..., :half], cos_p, sin_p), _rotary(q[..., half:], cos_b, sin_b)), dim=-1)
        k = torch.cat((_rotary(k[..., :half], cos_p, sin_p), _rotary(k[..., half:], cos_b, sin_b)), dim=-1)
        keys, values = cache.append_rows(layer, k[:, :, None], v.contiguous()[:, :, None])
        out = F.scaled_dot_product_attention(q[:, :, None], keys, values, attn_mask=mask[:, None, None, :])
        return self.dense(out.reshape(b, self.heads * self.d))  # type: ignore[no-any-return]


class MLP(nn.Module):
    def __init__(self, net: GLMNetwork, prefix: str) -> None:
        super().__init__()
        s = net.spec
        self.dense_h_to_4h = net.layer_linear(f"{prefix}.dense_h_to_4h", s.hidden_size, s.ffn_size, True)
        self.dense_4h_to_h = net.layer_linear(f"{prefix}.dense_4h_to_h", s.ffn_size, s.hidden_size, True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_4h_to_h(F.gelu(self.dense_h_to_4h(x), approximate="tanh"))  # type: ignore[no-any-return]


class GLMBlock(nn.Module):
    def __init__(self, net: GLMNetwork, prefix: str) -> None:
        super().__init__()
        s = net.spec
        self.alpha = s.residual_alpha
        with torch.device("meta"):
            self.input_layernorm = nn.LayerNorm(s.hidden_size, eps=s.eps, dtype=net.dtype)
            self.post_attention_layernorm = nn.LayerNorm(s.hidden_size, eps=s.eps, dtype=net.dtype)
        self.attention = SelfAttention(net, f"{prefix}.attention")
        self.mlp = MLP(net, f"{prefix}.mlp")

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, ...], layer: int, cache: KVCache | None,
                past: int, prefix: int) -> torch.Tensor:
        a = self.input_layernorm(x)
        h = a * self.alpha + self.attention(a, rope, layer, cache, past, prefix)
        m = self.post_attention_layernorm(h)
        return m * self.alpha + self.mlp(m)  # type: ignore[no-any-return]

    def forward_rows(self, x: torch.Tensor, rope: tuple[torch.Tensor, ...], layer: int, cache: KVCache,
                     mask: torch.Tensor) -> torch.Tensor:
        a = self.input_layernorm(x)
        h = a * self.alpha + self.attention.forward_rows(a, rope, layer, cache, mask)
        m = self.post_attention_layernorm(h)
        return m * self.alpha + self.mlp(m)  # type: ignore[no-any-return]


class _Transformer(nn.Module):
    def __init__(self, net: GLMNetwork) -> None:
        super().__init__()
        s = net.spec
        self.word_embeddings = make_embedding(s.vocab_size, s.hidden_size, net.plan, net.dtype, net.target)
        self.layers = nn.ModuleList([GLMBlock(net, f"transformer.layers.{i}") for i in range(s.num_layers)])
        with torch.device("meta"):
            self.final_layernorm = nn.LayerNorm(s.hidden_size, eps=s.eps, dtype=net.dtype)


class GLM1Network(GLMNetwork):
    """``transformer.word_embeddings`` / ``transformer.layers`` / ``lm_head``."""

    embedding_key = "transformer.word_embeddings.weight"
    output_key = "lm_head.weight"

    def __init__(self, spec: GLMSpec, dtype: torch.dtype, plan: QuantPlan, device: torch.device) -> None:
        super().__init__(spec, dtype, plan, device)
        self.transformer = _Transformer(self)
        self.lm_head = self.output_linear(spec.hidden_size, spec.vocab_size)
        self.rotary = RotaryTable2D(spec.head_dim // 2, dtype, device)

    def output_module(self) -> nn.Module:
        return self.lm_head

    def output_from_embedding(self) -> tuple[bool, bool]:
        """The word embeddings are the output layer's weight; a stored ``lm_head.weight`` is not read.

        The official ChatGLMConfig leaves ``tie_word_embeddings`` at transformers' default
        (true), so ``ChatGLMForConditionalGeneration`` computes logits with the word embedding
        matrix and never uses a stored ``lm_head.weight`` (the checkpoints it saves hold the
        same matrix twice). So, unless config.json says ``tie_word_embeddings: false``, the
        stored ``lm_head.weight`` is skipped (it may be absent) and
        :meth:`~openllm_hub_chatglm.network.common.GLMNetwork.load_tensors` installs the
        embedding tensor as the output layer too (converted or quantized like a stored one).
        """
        tied = self.spec.raw.get("tie_word_embeddings", True) is not False
        return tied, not tied

    def embedding_module(self) -> nn.Module:
        return self.transformer.word_embeddings

    def forward_hidden(self, ids: torch.Tensor, cache: KVCache | None, **positions: object) -> torch.Tensor:
        """Final-norm hidden states of ``ids`` following the cached tokens.

        ``positions``: ``position_ids`` and ``block_position_ids`` (LongTensors of len(ids))
        and ``context_length`` (int: tokens before it attend bidirectionally).
        """
        pos, block, ctx = positions["position_ids"], positions["block_position_ids"], positions["context_length"]
        assert isinstance(pos, torch.Tensor) and isinstance(block, torch.Tensor) and isinstance(ctx, int)
        past = cache.length if cache is not None else 0
        rope = (*self.rotary.get(pos), *self.rotary.get(block))
        x = embed(self.transformer.word_embeddings, ids, self.dtype)
        for i, layer in enumerate(self.transformer.layers):
            x = layer(x, rope, i, cache, past, ctx)
        if cache is not None:
            cache.advance(ids.shape[0])
        return self.transformer.final_layernorm(x)  # type: ignore[no-any-return]

    def forward_rows(self, ids: torch.Tensor, cache: KVCache, positions: torch.Tensor,
                     block_positions: torch.Tensor) -> torch.Tensor:
        """Final-norm hidden states (rows, hidden) of one generated token per sequence:
        ``ids[i]`` with 2D position ``(positions[i], block_positions[i])`` follows row ``i`` of
        the ragged ``cache`` (continuous batching; see ``KVCache.append_rows``)."""
        rope = (*self.rotary.get(positions), *self.rotary.get(block_positions))
        mask = cache.row_mask()
        x = embed(self.transformer.word_embeddings, ids, self.dtype)
        for i, layer in enumerate(self.transformer.layers):
            assert isinstance(layer, GLMBlock)
            x = layer.forward_rows(x, rope, i, cache, mask)
        cache.advance_rows()
        return self.transformer.final_layernorm(x)  # type: ignore[no-any-return]


def position_ids(prompt: list[int], spec: GLMSpec, total: int | None = None) -> tuple[list[int], list[int], int]:
    """ChatGLM-6B's 2D positions for ``prompt`` and, when ``total`` is given, for generated
    tokens up to ``total`` ids, plus the context length.

    As the reference builds them: the context ends at the first ``<sop>`` (bos; the whole
    prompt when absent); the mask position is that of ``[gMASK]`` when present, else of
    ``[MASK]``. Tokens before the context end have position ``i`` and block position 0;
    tokens from it on have the mask position and block positions 1, 2, ... Each generated
    token repeats the last position and adds one to the block position (the reference's
    ``_update_model_kwargs_for_generation``).
    """
    n = len(prompt)
    ctx = prompt.index(spec.bos_token_id) if spec.bos_token_id in prompt else n
    if spec.gmask_token_id in prompt:
        mask_pos: int | None = prompt.index(spec.gmask_token_id)
    elif spec.mask_token_id in prompt:
        mask_pos = prompt.index(spec.mask_token_id)
    else:
        mask_pos = None
    pos = [i if i < ctx or mask_pos is None else mask_pos for i in range(n)]
    block = [0 if i < ctx else i - ctx + 1 for i in range(n)]
    for _ in range(n, total or n):
        pos.append(pos[-1])
        block.append(block[-1] + 1)
    return pos, block, ctx
