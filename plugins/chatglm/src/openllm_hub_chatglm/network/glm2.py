"""ChatGLM2-6B / ChatGLM3-6B network (one architecture; v3 differs only in tokenizer and chat).

Pre-norm blocks with RMSNorm; multi-query attention with ``multi_query_group_num`` key/value
groups from one fused ``query_key_value`` projection (with bias) laid out as
``[q (heads*d) | k (groups*d) | v (groups*d)]``; rotary embedding on the first half of each
head's dimensions with adjacent pairs ``(x[2i], x[2i+1])`` rotated by
``theta_i = base**(-2i/(d/2))``; SwiGLU MLP whose ``dense_h_to_4h`` holds the gate rows first;
final RMSNorm and a separate ``output_layer``. The rotary table is computed in float32 and
stored in the model dtype, as the released modeling code does. ``rope_ratio`` (long-context
releases) divides positions for ChatGLM2 and scales the base for ChatGLM3.

:meth:`GLM2Network.forward_rows` decodes one token for each of several sequences at once
(continuous batching), the rows of a ragged KV cache, each at its own position.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from openllm_hub.engines.kv_cache import KVCache
from openllm_hub_chatglm.network.common import (
    GLMNetwork,
    QuantPlan,
    RMSNorm,
    attention,
    cached_keys_values,
    causal_mask,
    embed,
    make_embedding,
)
from openllm_hub_chatglm.spec import GLMSpec


class RotaryTable:
    """cos/sin of ChatGLM2's rotary embedding for positions 0..n-1, grown on demand."""

    def __init__(self, head_dim: int, dtype: torch.dtype, device: torch.device, *, base: float = 10000.0,
                 position_scale: float = 1.0) -> None:
        self.n_elem = head_dim // 2  # rotary covers half of each head
        self.dtype, self.device, self.base, self.position_scale = dtype, device, base, position_scale
        self.cos = self.sin = torch.empty(0)

    def get(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        need = int(positions.max()) + 1
        if self.cos.shape[0] < need:
            n = max(need, 2 * self.cos.shape[0], 256)
            theta = 1.0 / (self.base ** (torch.arange(0, self.n_elem, 2, dtype=torch.float32, device=self.device)
                                         / self.n_elem))
            seq = torch.arange(n, dtype=torch.float32, device=self.device) / self.position_scale
            angles = torch.outer(seq, theta)
            self.cos, self.sin = angles.cos().to(self.dtype), angles.sin().to(self.dtype)
        return self.cos[positions], self.sin[positions]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs of the first ``2 * cos.shape[-1]`` dims of x (T, H, D)."""
    rot = cos.shape[-1] * 2
    xr = x[..., :rot].reshape(*x.shape[:-1], rot // 2, 2)
    c, s = cos[:, None, :], sin[:, None, :]
    x0, x1 = xr[..., 0], xr[..., 1]
    out = torch.stack((x0 * c - x1 * s, x1 * c + x0 * s), dim=-1).flatten(-2)
    return torch.cat((out, x[..., rot:]), dim=-1)


class SelfAttention(nn.Module):
    def __init__(self, net: GLMNetwork, prefix: str) -> None:
        super().__init__()
        s = net.spec
        self.heads, self.groups, self.d = s.num_heads, s.num_kv_heads, s.head_dim
        qkv = (s.num_heads + 2 * s.num_kv_heads) * s.head_dim
        self.query_key_value = net.layer_linear(f"{prefix}.query_key_value", s.hidden_size, qkv, s.qkv_bias)
        self.dense = net.layer_linear(f"{prefix}.dense", s.num_heads * s.head_dim, s.hidden_size, s.linear_bias)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layer: int, cache: KVCache | None,
                past: int) -> torch.Tensor:
        t = x.shape[0]
        qkv = self.query_key_value(x)
        q, k, v = qkv.split([self.heads * self.d, self.groups * self.d, self.groups * self.d], dim=-1)
        q = apply_rotary(q.view(t, self.heads, self.d), cos, sin)
        k = apply_rotary(k.view(t, self.groups, self.d), cos, sin)
        k, v = cached_keys_values(cache, layer, k, v.view(t, self.groups, self.d))
        mask = causal_mask(past, t, x.device) if past else None
        return self.dense(attention(q, k, v, mask, causal=t > 1))  # type: ignore[no-any-return]

    def forward_rows(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layer: int, cache: KVCache,
                     mask: torch.Tensor) -> torch.Tensor:
        """One new token per sequence, ``x`` (rows, hidden): each row of the ragged ``cache``
        attends to its own positions (``mask`` (rows, positions) from ``KVCache.row_mask``)."""
        b = x.shape[0]
        qkv = self.query_key_value(x)
        q, k, v = qkv.split([self.heads * self.d, self.groups * self.d, self.groups * self.d], dim=-1)
        q = apply_rotary(q.view(b, self.heads, self.d), cos, sin)
        k = apply_rotary(k.view(b, self.groups, self.d), cos, sin)
        keys, values = cache.append_rows(layer, k[:, :, None], v.view(b, self.groups, self.d)[:, :, None])
        out = F.scaled_dot_product_attention(q[:, :, None], keys, values, attn_mask=mask[:, None, None, :],
                                             enable_gqa=self.groups != self.heads)
        return self.dense(out.reshape(b, self.heads * self.d))  # type: ignore[no-any-return]


class MLP(nn.Module):
    def __init__(self, net: GLMNetwork, prefix: str) -> None:
        super().__init__()
        s = net.spec
        self.dense_h_to_4h = net.layer_linear(f"{prefix}.dense_h_to_4h", s.hidden_size, 2 * s.ffn_size,
                                              s.linear_bias)
        self.dense_4h_to_h = net.layer_linear(f"{prefix}.dense_4h_to_h", s.ffn_size, s.hidden_size, s.linear_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.dense_h_to_4h(x).chunk(2, dim=-1)
        return self.dense_4h_to_h(F.silu(gate) * up)  # type: ignore[no-any-return]


class GLMBlock(nn.Module):
    def __init__(self, net: GLMNetwork, prefix: str) -> None:
        super().__init__()
        s = net.spec
        self.input_layernorm = RMSNorm(s.hidden_size, s.eps, net.dtype, "meta")
        self.self_attention = SelfAttention(net, f"{prefix}.self_attention")
        self.post_attention_layernorm = RMSNorm(s.hidden_size, s.eps, net.dtype, "meta")
        self.mlp = MLP(net, f"{prefix}.mlp")

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layer: int, cache: KVCache | None,
                past: int) -> torch.Tensor:
        x = x + self.self_attention(self.input_layernorm(x), cos, sin, layer, cache, past)
        return x + self.mlp(self.post_attention_layernorm(x))  # type: ignore[no-any-return]

    def forward_rows(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layer: int, cache: KVCache,
                     mask: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attention.forward_rows(self.input_layernorm(x), cos, sin, layer, cache, mask)
        return x + self.mlp(self.post_attention_layernorm(x))  # type: ignore[no-any-return]


class _Encoder(nn.Module):
    def __init__(self, net: GLMNetwork) -> None:
        super().__init__()
        s = net.spec
        self.layers = nn.ModuleList([GLMBlock(net, f"transformer.encoder.layers.{i}") for i in range(s.num_layers)])
        self.final_layernorm = RMSNorm(s.hidden_size, s.eps, net.dtype, "meta")


class _Embedding(nn.Module):
    def __init__(self, net: GLMNetwork) -> None:
        super().__init__()
        self.word_embeddings = make_embedding(net.spec.vocab_size, net.spec.hidden_size, net.plan, net.dtype,
                                              net.target)


class _Transformer(nn.Module):
    def __init__(self, net: GLMNetwork) -> None:
        super().__init__()
        self.embedding = _Embedding(net)
        self.encoder = _Encoder(net)
        self.output_layer = net.output_linear(net.spec.hidden_size, net.spec.vocab_size)


class GLM2Network(GLMNetwork):
    """``transformer.embedding`` / ``transformer.encoder`` / ``transformer.output_layer``."""

    embedding_key = "transformer.embedding.word_embeddings.weight"
    output_key = "transformer.output_layer.weight"

    def __init__(self, spec: GLMSpec, dtype: torch.dtype, plan: QuantPlan, device: torch.device) -> None:
        super().__init__(spec, dtype, plan, device)
        self.transformer = _Transformer(self)
        ratio = spec.rope_ratio
        self.rotary = RotaryTable(spec.head_dim, dtype, device, base=10000.0 * (ratio if spec.version == 3 else 1.0),
                                  position_scale=ratio if spec.version == 2 else 1.0)

    def output_module(self) -> nn.Module:
        return self.transformer.output_layer

    def embedding_module(self) -> nn.Module:
        return self.transformer.embedding.word_embeddings

    def forward_hidden(self, ids: torch.Tensor, cache: KVCache | None, **_: object) -> torch.Tensor:
        """Final-norm hidden states (T, hidden) of ``ids`` following the cached tokens."""
        past = cache.length if cache is not None else 0
        positions = torch.arange(past, past + ids.shape[0], device=ids.device)
        cos, sin = self.rotary.get(positions)
        x = embed(self.transformer.embedding.word_embeddings, ids, self.dtype)
        for i, layer in enumerate(self.transformer.encoder.layers):
            x = layer(x, cos, sin, i, cache, past)
        if cache is not None:
            cache.advance(ids.shape[0])
        return self.transformer.encoder.final_layernorm(x)  # type: ignore[no-any-return]

    def forward_rows(self, ids: torch.Tensor, cache: KVCache, positions: torch.Tensor) -> torch.Tensor:
        """Final-norm hidden states (rows, hidden) of one new token per sequence: ``ids[i]`` at
        position ``positions[i]`` follows row ``i`` of the ragged ``cache`` (continuous
        batching: each row has its own length; see ``KVCache.append_rows``)."""
        cos, sin = self.rotary.get(positions)
        mask = cache.row_mask()
        x = embed(self.transformer.embedding.word_embeddings, ids, self.dtype)
        for i, layer in enumerate(self.transformer.encoder.layers):
            assert isinstance(layer, GLMBlock)
            x = layer.forward_rows(x, cos, sin, i, cache, mask)
        cache.advance_rows()
        return self.transformer.encoder.final_layernorm(x)  # type: ignore[no-any-return]
