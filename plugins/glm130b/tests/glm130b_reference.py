"""An independent float64 numpy implementation of the GLM-130B forward pass and quantizer.

Written straight from the architecture's formulas (see modeling.py's docstring) with none of
the engine's machinery: unpartitioned weights, the whole sequence at once with an explicit
attention mask, no KV cache, no torch. The tests compare the tensor-parallel engine
against it; ``scripts/gpu_check.py`` does too on a GPU machine.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from openllm_hub_glm130b.spec import GLMConfig

F64 = npt.NDArray[np.float64]
_erf = np.vectorize(math.erf, otypes=[np.float64])


def _np(t: Any) -> F64:
    if hasattr(t, "detach"):
        t = t.detach().double().numpy()
    out: F64 = np.asarray(t, dtype=np.float64)
    return out


def _ln(x: F64, w: F64, b: F64, eps: float) -> F64:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    out: F64 = (x - mu) / np.sqrt(var + eps) * w + b
    return out


def _gelu(x: F64) -> F64:
    return np.asarray(0.5 * x * (1.0 + _erf(x / math.sqrt(2.0))), dtype=np.float64)


def _rot(x: F64, cos: F64, sin: F64) -> F64:
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def reference_logits(weights: Mapping[str, Any], cfg: GLMConfig, ids: Sequence[int], positions: Sequence[int],
                     context: int) -> F64:
    """Logits ``[T, V]`` of ``ids`` with the given position ids and bidirectional ``context``."""
    w = {k: _np(v) for k, v in weights.items()}
    T, H, D = len(ids), cfg.num_attention_heads, cfg.head_dim
    eps, alpha, inner = cfg.layernorm_epsilon, math.sqrt(2.0 * cfg.num_layers), cfg.inner_hidden_size
    emb = w["transformer.word_embeddings.weight"]
    x = emb[np.asarray(ids)]
    i, j = np.arange(T)[:, None], np.arange(T)[None, :]
    allowed = (j <= i) | (j < context)
    # SAT's rotary works in fp16 in every dtype: fp16 inv_freq, fp16 positions, the angle rounded
    # to fp16, cos/sin of the fp16 angle rounded to fp16
    inv = (np.float32(1.0) / np.float32(10000.0) ** (np.arange(0, D, 2, dtype=np.float32) / np.float32(D)))
    inv = inv.astype(np.float16).astype(np.float32)
    pos = np.asarray(positions).astype(np.float16).astype(np.float32)
    ang = (pos[:, None] * inv[None, :]).astype(np.float16)
    ang = np.concatenate([ang, ang], axis=-1)[:, None, :]  # [T, 1, D]
    cos, sin = np.cos(ang).astype(np.float64), np.sin(ang).astype(np.float64)
    for n in range(cfg.num_layers):
        p = f"transformer.layers.{n}."
        a = _ln(x, w[p + "input_layernorm.weight"], w[p + "input_layernorm.bias"], eps)
        qkv = (a @ w[p + "attention.query_key_value.weight"].T + w[p + "attention.query_key_value.bias"])
        qkv = qkv.reshape(T, H, 3 * D)
        q, k, v = _rot(qkv[..., :D], cos, sin), _rot(qkv[..., D : 2 * D], cos, sin), qkv[..., 2 * D :]
        scores = np.einsum("ihd,jhd->hij", q, k) / math.sqrt(D)
        scores = np.where(allowed[None], scores, -np.inf)
        scores -= scores.max(-1, keepdims=True)
        probs = np.exp(scores)
        probs /= probs.sum(-1, keepdims=True)
        ctx = np.einsum("hij,jhd->ihd", probs, v).reshape(T, H * D)
        x = a * alpha + ctx @ w[p + "attention.dense.weight"].T + w[p + "attention.dense.bias"]
        m = _ln(x, w[p + "post_attention_layernorm.weight"], w[p + "post_attention_layernorm.bias"], eps)
        u = m @ w[p + "mlp.dense_h_to_4h.weight"].T + w[p + "mlp.dense_h_to_4h.bias"]
        g = u[:, :inner] * _gelu(u[:, inner:])
        x = m * alpha + g @ w[p + "mlp.dense_4h_to_h.weight"].T + w[p + "mlp.dense_4h_to_h.bias"]
    x = _ln(x, w["transformer.final_layernorm.weight"], w["transformer.final_layernorm.bias"], eps)
    return np.asarray(x @ emb.T, dtype=np.float64)


def reference_quantize(weight: Any, bits: int) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float16]]:
    """GLM-130B's per-row absmax quantization; INT4 packed high nibble first (as its CUDA kernel)."""
    x = _np(weight).astype(np.float32)  # the quotient is taken in fp32, as the engine does
    top = 2 ** (bits - 1) - 1
    scale = (np.abs(x).max(axis=1) / np.float32(top)).astype(np.float16)
    s = scale.astype(np.float32)
    q = np.clip(np.round(x / np.where(s > 0, s, np.float32(1.0))[:, None]), -top, top).astype(np.int64)
    if bits == 8:
        return q.astype(np.int8), scale
    byte = ((q[:, 0::2] & 0xF) << 4) | (q[:, 1::2] & 0xF)
    return byte.astype(np.uint8).view(np.int8), scale


def reference_dequantize(q: Any, scale: Any, bits: int) -> F64:
    b = np.asarray(q).astype(np.int64)
    if bits == 4:
        high = b >> 4
        low = b & 0xF
        low = np.where(low >= 8, low - 16, low)
        vals = np.stack([high, low], axis=-1).reshape(b.shape[0], -1)
    else:
        vals = b
    return np.asarray(vals * np.asarray(scale, dtype=np.float64)[:, None], dtype=np.float64)
