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

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

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


#: checkpoint keys that hold no weights (recomputed buffers)
IGNORED_SUFFIXES: tuple[str, ...] = ("rotary_emb.inv_freq", "rotary_pos_emb.inv_freq")


@dataclass(frozen=True)
class CheckpointLayout:
    """The tensors a checkpoint for one network must hold, by official name, and their stored
    shapes (:meth:`GLMNetwork.checkpoint_layout` computes it from the network's modules).

    The same checks run twice: on the names and shapes in the weight files' headers before the
    network is built (:meth:`check_stored`: a broken or mismatched checkpoint fails before any
    memory is allocated or any data read) and on every tensor while it is installed
    (:meth:`GLMNetwork.load_tensors`).
    """

    #: every tensor the network is filled with -> the shape the checkpoint stores it in
    shapes: Mapping[str, tuple[int, ...]]
    #: the model, for messages ("a chatglm2 model of 28 layers")
    model: str
    embedding_key: str
    #: the output tensor the word embeddings stand in for when the checkpoint lacks it (tied)
    output_key: str | None = None
    #: stored tensors that are never read (ChatGLM-6B's copy of the embedding matrix as ``lm_head``)
    skipped: frozenset[str] = frozenset()
    #: the weights stored quantized (int8 values; INT4: two per byte) and their bit width
    quantized: frozenset[str] = frozenset()
    bits: int = 0

    def ignores(self, name: str) -> bool:
        """A stored tensor that is never read: a recomputed buffer or a skipped copy."""
        return name.endswith(IGNORED_SUFFIXES) or name in self.skipped

    def check(self, name: str, shape: tuple[int, ...], where: str | Path) -> None:
        """A stored tensor (not :meth:`ignores`) must be one of the network's, in its shape."""
        want = self.shapes.get(name)
        if want is None:
            raise CorruptFileError(f"unexpected tensor {name!r} for {self.model}", where=where,
                                   fix="the checkpoint does not match its config.json")
        if tuple(shape) == want:
            return
        if name in self.quantized:
            per_byte = ", two values per byte" if self.bits == 4 else ""
            raise CorruptFileError(f"tensor {name!r} has shape {tuple(shape)}, expected {want} (INT{self.bits}: "
                                   f"int8 values{per_byte}, from quantization_bit in config.json)", where=where,
                                   fix="the checkpoint's quantization_bit or shapes do not match its config")
        raise CorruptFileError(f"tensor {name!r} has shape {tuple(shape)}, expected {want}", where=where,
                               fix="the checkpoint does not match its config.json")

    def check_complete(self, seen: Iterable[str], where: str | Path) -> None:
        """Every tensor of the network was stored (the tied output may stand in for the embeddings)."""
        have = set(seen)
        if self.output_key is not None and self.embedding_key in have:
            have.add(self.output_key)
        missing = sorted(set(self.shapes) - have)
        if missing:
            raise CorruptFileError(f"the checkpoint lacks {len(missing)} tensor(s), e.g. {missing[:3]}",
                                   where=where, fix="download the missing shards again (or use the config.json "
                                                    "that came with these weights)")

    def check_stored(self, stored: Iterable[tuple[str, tuple[int, ...], Path]], folder: Path) -> None:
        """Check the (name, shape, file) of every stored tensor, read from the files' headers:
        no unknown tensor, none of the wrong shape (both named with their file), none missing."""
        seen: set[str] = set()
        for name, shape, file in stored:
            if self.ignores(name):
                continue
            self.check(name, shape, file)
            seen.add(name)
        self.check_complete(seen, folder)


class GLMNetwork(nn.Module):
    """Base of the two networks: module names equal the official checkpoint keys, so
    :meth:`load_tensors` installs a checkpoint by name and ``state_dict()`` saves one."""

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

    def output_from_embedding(self) -> tuple[bool, bool]:
        """How the output layer may take the word embeddings: (tied, stored output read).

        Tied: when the checkpoint has no output tensor, the output layer shares the embedding
        matrix (config.json ``tie_word_embeddings: true``, both plain float modules); a stored
        output tensor is read. ChatGLM-6B overrides this (its stored copy is never read)."""
        tied = (self.spec.tie_word_embeddings and isinstance(self.output_module(), nn.Linear)
                and isinstance(self.embedding_module(), nn.Embedding))
        return tied, True

    def checkpoint_layout(self) -> CheckpointLayout:
        """What a checkpoint for this network holds, from the network's own modules (their
        official names and shapes): float ``weight``/``bias``/norm tensors, and for the layers
        a quantized checkpoint stores as INT8/INT4 an int8 ``weight`` (INT4: two values per
        byte) plus its ``weight_scale``. :meth:`load_tensors` checks every tensor against it and
        the engine checks the stored headers against it before building the real network
        (:func:`~openllm_hub_chatglm.network.checkpoint_layout`: this network on the meta device)."""
        shapes: dict[str, tuple[int, ...]] = {}
        for mod_name, module in self.named_modules():
            if isinstance(module, QuantEmbedding):
                continue
            prefix = mod_name[: -len(".inner")] if mod_name.endswith(".inner") else mod_name
            if isinstance(module, QuantLinear):
                if prefix in self.ckpt_quantized:
                    shapes[f"{prefix}.weight"] = tuple(module.weight.shape)
                    shapes[f"{prefix}.weight_scale"] = (module.out_features,)
                else:  # a float weight, quantized while loading
                    shapes[f"{prefix}.weight"] = (module.out_features, module.in_features)
                if module.bias is not None:
                    shapes[f"{prefix}.bias"] = tuple(module.bias.shape)
                continue
            for pname, param in module.named_parameters(recurse=False):
                shapes[f"{prefix}.{pname}"] = tuple(param.shape)
        tied, read_output = self.output_from_embedding()
        return CheckpointLayout(
            shapes=shapes, model=f"a {self.spec.variant} model of {self.spec.num_layers} layers",
            embedding_key=self.embedding_key, output_key=self.output_key if tied else None,
            skipped=frozenset() if read_output else frozenset({self.output_key}),
            quantized=frozenset(f"{m}.weight" for m in self.ckpt_quantized), bits=self.spec.quantization_bit)

    def load_tensors(self, tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Install checkpoint tensors by their official names; convert, quantize, place.

        Raises :class:`CorruptFileError` for unknown names, wrong shapes and missing tensors
        (the checks of :class:`CheckpointLayout`, which the engine also runs on the stored
        headers before building the network).
        """
        modules = dict(self.named_modules())
        layout = self.checkpoint_layout()
        seen: set[str] = set()
        pending_q: dict[str, dict[str, torch.Tensor]] = {}

        def install(name: str, tensor: torch.Tensor) -> None:
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
                return
            self._set_param(module, attr, tensor, name)

        for name, tensor in tensors:
            if layout.ignores(name):
                continue
            layout.check(name, tuple(tensor.shape), "checkpoint")
            if name in seen:
                raise CorruptFileError(f"tensor {name!r} appears twice", where="checkpoint")
            seen.add(name)
            install(name, tensor)
            if name == self.embedding_key and self.output_key in layout.skipped:
                install(self.output_key, tensor)  # ChatGLM-6B: the embedding matrix is the output layer
                seen.add(self.output_key)
        if layout.output_key is not None and layout.output_key not in seen and self.embedding_key in seen:
            out, emb = self.output_module(), self.embedding_module()
            assert isinstance(out, nn.Linear) and isinstance(emb, nn.Embedding)  # output_from_embedding's condition
            out.weight = emb.weight
        layout.check_complete(seen, "checkpoint")
        if pending_q:
            listed = [f"{k}.weight_scale" for k in pending_q]
            raise CorruptFileError(f"the checkpoint lacks {len(listed)} tensor(s), e.g. {listed[:3]}",
                                   where="checkpoint", fix="download the missing shards again")
        self.to(self.target)

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
