"""Pieces both ChatGLM networks share: attention and its masks, norms, linears that may be
quantized, and the base class that installs checkpoint tensors by their official names.

Shapes inside the networks are unbatched: hidden states are ``(tokens, hidden)`` and
queries ``(tokens, heads, head_dim)``; keys and values are ``(kv_heads, tokens, head_dim)``,
one row of the shared :class:`~openllm_hub.engines.kv_cache.KVCache` (batch 1: one sequence).
The exception is ``forward_rows`` (continuous batching): one new token for each of several
sequences, ``(rows, hidden)``, over the rows of a ragged cache. The INT8/INT4 layers are the shared ones of
:mod:`openllm_hub.engines.torch_quant` (ChatGLM's official checkpoints use that format).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from openllm_hub.engines.kv_cache import KVCache
from openllm_hub.engines.torch_quant import QuantEmbedding, QuantLinear
from openllm_hub.plugin import CorruptFileError, InvalidParameterError
from openllm_hub_chatglm.spec import GLMSpec


@dataclass(frozen=True)
class QuantPlan:
    """Which weights hold INT8/INT4 values: the layer linears (the official scheme) and,
    optionally, the word embeddings and output layer too."""

    bits: int = 0
    embeddings: bool = False
    scale_dtype: torch.dtype = torch.float16


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
              causal: bool) -> torch.Tensor:
    """Scaled dot-product attention of (T, H, D) queries over (G, S, D) keys/values (the
    cache's per-row layout), where each of the G key/value groups serves H/G consecutive
    query heads. Returns (T, H*D)."""
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1), k, v, attn_mask=mask, is_causal=causal and mask is None, enable_gqa=k.shape[0] != q.shape[1])
    return out.transpose(0, 1).reshape(q.shape[0], -1)


def cached_keys_values(cache: KVCache | None, layer: int, k: torch.Tensor, v: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """The new (T, G, D) keys/values as (G, S, D) for :func:`attention`: after the cached
    ones of ``layer`` when there is a cache (which stores them), else just these."""
    k, v = k.transpose(0, 1), v.transpose(0, 1)
    if cache is None:
        return k, v
    keys, values = cache.append(layer, k[None], v[None])
    return keys[0], values[0]


def causal_mask(past: int, new: int, device: torch.device, prefix: int = 0) -> torch.Tensor | None:
    """Boolean (new, past+new) mask, True where attention is allowed: each token sees the
    ones before it, and every token sees the first ``prefix`` ones (ChatGLM-6B's
    bidirectional prompt). None when every key is visible (one new token)."""
    if new == 1:
        return None
    rows = torch.arange(past, past + new, device=device)[:, None]
    cols = torch.arange(past + new, device=device)[None, :]
    return (cols <= rows) | (cols < prefix)


class RMSNorm(nn.Module):
    """RMS norm as ChatGLM2 computes it: variance in float32, result cast to the input dtype."""

    def __init__(self, size: int, eps: float, dtype: torch.dtype, device: torch.device | str) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(size, dtype=dtype, device=device), requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.float().pow(2).mean(-1, keepdim=True)
        return (self.weight * (x * torch.rsqrt(variance + self.eps))).to(x.dtype)


def make_linear(in_f: int, out_f: int, bias: bool, bits: int, dtype: torch.dtype, scale_dtype: torch.dtype,
                device: torch.device) -> nn.Module:
    """A float linear on the meta device (filled at load) or an INT8/INT4 one on ``device``."""
    if bits:
        return QuantLinear(in_f, out_f, bits, bias=bias, scale_dtype=scale_dtype, device=device, bias_dtype=dtype)
    with torch.device("meta"):
        return nn.Linear(in_f, out_f, bias=bias, dtype=dtype)


def make_embedding(num: int, dim: int, plan: QuantPlan, dtype: torch.dtype, device: torch.device) -> nn.Module:
    if plan.bits and plan.embeddings:
        return QuantEmbedding(num, dim, plan.bits, scale_dtype=plan.scale_dtype, device=device)
    with torch.device("meta"):
        return nn.Embedding(num, dim, dtype=dtype)


def embed(module: nn.Module, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    out: torch.Tensor = module(ids, dtype) if isinstance(module, QuantEmbedding) else module(ids)
    return out


class GLMNetwork(nn.Module):
    """Base of the two networks: module names equal the official checkpoint keys, so
    :meth:`load_tensors` installs a checkpoint by name and ``state_dict()`` saves one."""

    #: checkpoint keys that hold no weights (recomputed buffers)
    IGNORED_SUFFIXES: tuple[str, ...] = ("rotary_emb.inv_freq", "rotary_pos_emb.inv_freq")
    embedding_key: str = ""
    output_key: str = ""

    def __init__(self, spec: GLMSpec, dtype: torch.dtype, plan: QuantPlan, device: torch.device) -> None:
        super().__init__()
        self.spec, self.dtype, self.plan, self.target = spec, dtype, plan, device
        #: modules whose weights the checkpoint itself stores quantized (weight + weight_scale)
        self.ckpt_quantized: set[str] = set()

    def layer_linear(self, name: str, in_f: int, out_f: int, bias: bool) -> nn.Module:
        """One of the four linears per layer that the official scheme quantizes."""
        if self.spec.quantization_bit:
            self.ckpt_quantized.add(name)
        self._check_int4(name, in_f, from_checkpoint=bool(self.spec.quantization_bit))
        return make_linear(in_f, out_f, bias, self.plan.bits, self.dtype, self.plan.scale_dtype, self.target)

    def output_linear(self, in_f: int, out_f: int) -> nn.Module:
        bits = self.plan.bits if self.plan.embeddings else 0
        if bits:
            self._check_int4("the output layer and embeddings", in_f, from_checkpoint=False)
        return make_linear(in_f, out_f, False, bits, self.dtype, self.plan.scale_dtype, self.target)

    def _check_int4(self, name: str, in_f: int, *, from_checkpoint: bool) -> None:
        """INT4 packs two input columns per byte, so every input dimension must be even."""
        if self.plan.bits != 4 or in_f % 2 == 0:
            return
        if from_checkpoint:
            raise CorruptFileError(f"an INT4 checkpoint cannot hold {name}: its input dimension {in_f} is odd, "
                                   "but INT4 packs two values per byte", where="config.json",
                                   fix="the config does not match the quantized weights; re-download both")
        raise InvalidParameterError(f"cannot quantize to int4: {name} has an odd input dimension ({in_f}) and "
                                    "INT4 packs two values per byte", where="quantize", fix="use quantize='int8'")

    # ---- what the versions implement -------------------------------------------------------
    def forward_hidden(self, ids: torch.Tensor, cache: KVCache | None, **positions: object) -> torch.Tensor:
        raise NotImplementedError

    def output_module(self) -> nn.Module:
        raise NotImplementedError

    def embedding_module(self) -> nn.Module:
        raise NotImplementedError

    # ---- shared ---------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.target

    def new_cache(self, limit: int, batch: int = 1) -> KVCache:
        """An empty KV cache for one sequence (``batch`` rows; 0: a batch's cache that sequences
        join with ``KVCache.add_rows``) of at most ``limit`` positions."""
        s = self.spec
        return KVCache(s.num_layers, batch, s.num_kv_heads, s.head_dim, self.dtype, self.device, limit=limit,
                       min_capacity=64)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.output_module()(hidden)  # type: ignore[no-any-return]

    def load_tensors(self, tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Install checkpoint tensors by their official names; convert, quantize, place.

        Raises :class:`CorruptFileError` for unknown names, wrong shapes and missing tensors.
        """
        modules = dict(self.named_modules())
        expected = set(self._expected_keys())
        seen: set[str] = set()
        pending_q: dict[str, dict[str, torch.Tensor]] = {}
        for name, tensor in tensors:
            if name.endswith(self.IGNORED_SUFFIXES):
                continue
            if name not in expected:
                raise CorruptFileError(f"unexpected tensor {name!r} for a {self.spec.variant} model of "
                                       f"{self.spec.num_layers} layers", where="checkpoint",
                                       fix="the checkpoint does not match its config.json")
            if name in seen:
                raise CorruptFileError(f"tensor {name!r} appears twice", where="checkpoint")
            seen.add(name)
            mod_name, _, attr = name.rpartition(".")
            module = modules[mod_name]
            if isinstance(module, QuantEmbedding):
                module = module.inner
            if isinstance(module, QuantLinear):
                if attr == "bias":
                    self._set_param(module, "bias", tensor, name)
                elif tensor.dtype == torch.int8 or attr == "weight_scale":
                    parts = pending_q.setdefault(mod_name, {})
                    parts[attr] = tensor
                    if len(parts) == 2:
                        module.set_quantized(parts["weight"], parts["weight_scale"])
                        del pending_q[mod_name]
                else:
                    module.set_float(tensor.to(self.target))
                continue
            self._set_param(module, attr, tensor, name)
        if self.spec.tie_word_embeddings and self.output_key not in seen and self.embedding_key in seen:
            out, emb = self.output_module(), self.embedding_module()
            if isinstance(out, nn.Linear) and isinstance(emb, nn.Embedding):
                out.weight = emb.weight
                seen.add(self.output_key)
        missing = sorted(expected - seen)
        if missing or pending_q:
            listed = missing or [f"{k}.weight_scale" for k in pending_q]
            raise CorruptFileError(f"the checkpoint lacks {len(listed)} tensor(s), e.g. {listed[:3]}",
                                   where="checkpoint", fix="download the missing shards again")
        self.to(self.target)

    def _expected_keys(self) -> list[str]:
        keys = []
        for mod_name, module in self.named_modules():
            if isinstance(module, QuantEmbedding):
                continue
            prefix = mod_name[: -len(".inner")] if mod_name.endswith(".inner") else mod_name
            if isinstance(module, QuantLinear):
                keys.append(f"{prefix}.weight")
                if prefix in self.ckpt_quantized:
                    keys.append(f"{prefix}.weight_scale")
                if module.bias is not None:
                    keys.append(f"{prefix}.bias")
                continue
            for pname, _ in module.named_parameters(recurse=False):
                keys.append(f"{prefix}.{pname}")
        return keys

    def _set_param(self, module: nn.Module, attr: str, tensor: torch.Tensor, name: str) -> None:
        current = getattr(module, attr, None)
        if not isinstance(current, torch.Tensor):
            raise CorruptFileError(f"unexpected tensor {name!r}", where="checkpoint")
        if tuple(current.shape) != tuple(tensor.shape):
            raise CorruptFileError(f"tensor {name!r} has shape {tuple(tensor.shape)}, expected "
                                   f"{tuple(current.shape)}", where="checkpoint",
                                   fix="the checkpoint does not match its config.json")
        if not tensor.is_floating_point():
            raise CorruptFileError(f"tensor {name!r} is {tensor.dtype}, expected floating point", where="checkpoint",
                                   fix="a quantized checkpoint needs quantization_bit in config.json")
        value = tensor.to(device=self.target, dtype=current.dtype if current.is_floating_point() else self.dtype)
        setattr(module, attr, nn.Parameter(value.contiguous(), requires_grad=False))
