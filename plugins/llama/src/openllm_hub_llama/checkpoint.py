"""Reading LLaMA checkpoints lazily, tensor by tensor, for the converters.

* :class:`LlamaHParams` — the architecture numbers, from a HuggingFace ``config.json`` or a
  Meta ``params.json`` (+ tensor shapes), and back.
* :class:`HFCheckpoint` — a HuggingFace folder: one or sharded safetensors / ``.bin`` files
  (with their index, found and checked by :mod:`openllm_hub.engines.hf_folder`), validated up
  front (missing shard, index disagreeing with the shards, truncated file, unsupported dtype,
  missing tensor) and read by row ranges. Safetensors data
  is read with ``pread`` into small buffers, not memory-mapped, so peak memory stays at the
  chunk being converted.
* :class:`MetaCheckpoint` — ``params.json`` + ``consolidated.NN.pth`` model-parallel shards
  (memory-mapped with ``torch.load(weights_only=True)``), merged one tensor at a time.
* The rotary q/k row permutations between Meta's interleaved layout (also GGUF's) and
  HuggingFace's half-split layout, and the tensor name maps between the three formats.

torch is imported inside the functions that need it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, BinaryIO, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, model_validator

from openllm_hub.engines.finite import check_finite
from openllm_hub.engines.hf_folder import HFFolder
from openllm_hub.plugin import (
    ConversionError,
    CorruptFileError,
    NotFoundError,
    load_torch_checkpoint,
    parse_config,
    read_json,
    read_safetensors_header,
)

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

#: safetensors dtype names the converters accept, with their item size.
SUPPORTED_DTYPES: dict[str, int] = {"F32": 4, "F16": 2, "BF16": 2}
DEFAULT_ROPE_THETA = 10000.0


# ---- config files, validated -------------------------------------------------------------------
_PosInt = Annotated[StrictInt, Field(gt=0, le=1 << 31)]
_PosFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
#: torch_dtype / dtype values transformers understands for a LLaMA checkpoint.
HF_DTYPES = ("float32", "float16", "bfloat16", "float64", "auto")


class _RopeParameters(BaseModel):
    model_config = ConfigDict(extra="allow")
    rope_theta: _PosFloat | None = None
    factor: _PosFloat | None = None


class HFLlamaConfig(BaseModel):
    """The numbers of a LLaMA ``config.json`` that shape the network, with their bounds (what
    transformers would otherwise take with a bare ``int()`` or divide by); other keys pass."""

    model_config = ConfigDict(extra="allow")
    vocab_size: _PosInt
    hidden_size: _PosInt
    intermediate_size: _PosInt
    num_hidden_layers: _PosInt
    num_attention_heads: _PosInt
    num_key_value_heads: _PosInt | None = None
    head_dim: _PosInt | None = None
    rms_norm_eps: Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)]
    rope_theta: _PosFloat | None = None
    max_position_embeddings: _PosInt | None = None
    tie_word_embeddings: StrictBool | None = None
    torch_dtype: Literal["float32", "float16", "bfloat16", "float64", "auto"] | None = None
    dtype: Literal["float32", "float16", "bfloat16", "float64", "auto"] | None = None
    rope_parameters: _RopeParameters | None = None
    rope_scaling: _RopeParameters | None = None

    @model_validator(mode="after")
    def _heads(self) -> HFLlamaConfig:
        heads, kv = self.num_attention_heads, self.num_key_value_heads or self.num_attention_heads
        if self.hidden_size % heads:
            raise ValueError(f"hidden_size {self.hidden_size} does not split into {heads} attention heads")
        head_dim = self.head_dim or self.hidden_size // heads
        if head_dim % 2:
            raise ValueError(f"the head size {head_dim} must be even (rotary embeddings rotate pairs)")
        if heads % kv:
            raise ValueError(f"num_key_value_heads {kv} does not divide num_attention_heads {heads}")
        return self


class MetaParams(BaseModel):
    """Meta's ``params.json``, with bounds."""

    model_config = ConfigDict(extra="allow")
    dim: _PosInt
    n_heads: _PosInt
    n_layers: _PosInt
    norm_eps: Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)]
    n_kv_heads: _PosInt | None = None
    rope_theta: _PosFloat | None = None
    vocab_size: Annotated[StrictInt, Field(ge=-1)] = -1
    max_seq_len: _PosInt | None = None
    multiple_of: _PosInt | None = None
    ffn_dim_multiplier: _PosFloat | None = None

    @model_validator(mode="after")
    def _heads(self) -> MetaParams:
        kv = self.n_kv_heads or self.n_heads
        if self.dim % self.n_heads or (self.dim // self.n_heads) % 2:
            raise ValueError(f"dim {self.dim} does not split into {self.n_heads} heads of an even size")
        if self.n_heads % kv:
            raise ValueError(f"n_kv_heads {kv} does not divide n_heads {self.n_heads}")
        if self.vocab_size == 0:
            raise ValueError("vocab_size must be -1 (taken from the weights) or positive")
        return self


def read_hf_config(path: Path) -> tuple[dict[str, Any], HFLlamaConfig]:
    """``config.json`` of an HF LLaMA folder: the raw mapping and its validated numbers."""
    where = path / "config.json"
    raw = read_json(where)
    return raw, parse_config(HFLlamaConfig, raw, where)


# ---- hyper-parameters ----------------------------------------------------------------------------
#: HF architectures that are a LLaMA network: Mistral's is a LLaMA with sliding-window attention
#: (llama.cpp's ``convert_hf_to_gguf.py`` converts it as ``llama`` too)
LLAMA_MODEL_TYPES = ("llama", "mistral")
LLAMA_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")


def is_llama_config(cfg: Mapping[str, Any]) -> bool:
    """Whether an HF ``config.json`` describes a LLaMA network (LLaMA or Mistral)."""
    archs = cfg.get("architectures") or []
    return cfg.get("model_type") in (None, *LLAMA_MODEL_TYPES) or any(a in archs for a in LLAMA_ARCHITECTURES)


def window_context(window: int | None, wanted: int | None, default: int, engine: str,
                   more: str = "n_ctx=N opens more, with full attention beyond the window") -> tuple[int, str | None]:
    """The context to open for a model with a Mistral-style sliding window on an engine that
    attends over the whole context (llama.cpp runs ``llama`` files without the window; the
    transformers engine runs ``LlamaForCausalLM``), and the one-line warning to give, if any.

    Within the window full attention and sliding attention are the same, so the default
    context is capped at the window: what the model computes stays the original model's (a
    longer prompt is refused as too long, naming the context). A context asked for beyond the
    window is opened as asked (the caller chose it; llama.cpp and ollama run such files so)
    with a warning that beyond the window the attention, and so the answers, differ from the
    original model's. ``wanted``: the caller's context (None: ``default``); ``more``: how to
    open a longer context on this engine."""
    if window is None:
        return wanted or default, None
    if wanted is None:
        if default <= window:
            return default, None
        return window, (f"this model attends over a sliding window of {window} tokens, which {engine} does not "
                        f"apply: the context is capped at {window} tokens ({more})")
    if wanted <= window:
        return wanted, None
    return wanted, (f"n_ctx={wanted} is beyond this model's sliding window of {window} tokens, which {engine} does "
                    f"not apply: beyond {window} tokens it attends over the whole context, so its answers differ "
                    "from the original model's")

@dataclass(frozen=True)
class LlamaHParams:
    """What the converters need to know about a LLaMA architecture."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    rms_norm_eps: float
    rope_theta: float = DEFAULT_ROPE_THETA
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    rope_linear_factor: float | None = None
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    pad_token_id: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: Mistral-style sliding-window attention (each token sees the last ``sliding_window``
    #: tokens), when the window is smaller than the context; None: full attention
    sliding_window: int | None = None

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_hf_config(cls, cfg: Mapping[str, Any], where: str | Path) -> LlamaHParams:
        """Parse a LLaMA ``config.json`` (classic or transformers-5 ``rope_parameters`` layout)."""
        if not isinstance(cfg, Mapping):
            parse_config(HFLlamaConfig, cfg, where)  # raises: not a JSON object

        def need(key: str) -> Any:
            if key not in cfg:
                raise CorruptFileError(f"config.json lacks {key!r}", where=where,
                                       fix="restore config.json from the model's source")
            return cfg[key]

        if not is_llama_config(cfg):
            raise ConversionError(f"not a LLaMA config (model_type={cfg.get('model_type')!r})", where=where)
        for key in ("num_attention_heads", "hidden_size", "vocab_size", "intermediate_size", "num_hidden_layers",
                    "rms_norm_eps"):
            need(key)
        valid = parse_config(HFLlamaConfig, dict(cfg), where)
        heads = int(need("num_attention_heads"))
        hidden = int(need("hidden_size"))
        kv = int(cfg.get("num_key_value_heads") or heads)
        if hidden % heads or (hidden // heads) % 2 or heads % kv:
            raise CorruptFileError(f"inconsistent head counts: hidden {hidden}, heads {heads}, kv heads {kv}",
                                   where=where)
        head_dim = cfg.get("head_dim")
        if head_dim is not None and int(head_dim) != hidden // heads:
            raise ConversionError(f"head_dim {head_dim} != hidden_size / num_attention_heads is not supported",
                                  where=where)
        if cfg.get("attention_bias") or cfg.get("mlp_bias"):
            raise ConversionError("LLaMA variants with attention/MLP biases are not supported", where=where)
        if cfg.get("hidden_act", "silu") != "silu":
            raise ConversionError(f"hidden_act {cfg.get('hidden_act')!r} is not LLaMA's silu", where=where)
        rope = cfg.get("rope_parameters") or {}
        scaling = cfg.get("rope_scaling") or {}
        theta = (valid.rope_parameters.rope_theta if valid.rope_parameters else None) or valid.rope_theta \
            or DEFAULT_ROPE_THETA
        rope_type = scaling.get("rope_type", scaling.get("type")) or rope.get("rope_type", "default")
        factor: float | None = None
        if rope_type == "linear":
            factor = float(scaling.get("factor", rope.get("factor", 1.0)))
        elif rope_type != "default":
            raise ConversionError(f"rope scaling {rope_type!r} is not supported (only linear)", where=where)

        def token_id(key: str) -> int | None:
            v = cfg.get(key)
            if isinstance(v, list):
                v = v[0] if v else None
            return int(v) if isinstance(v, int) and v >= 0 else None

        ctx = int(cfg.get("max_position_embeddings") or 2048)
        window = cfg.get("sliding_window")
        if window is not None and (not isinstance(window, int) or isinstance(window, bool) or window < 1):
            raise CorruptFileError(f"sliding_window must be a positive number of tokens or null, got {window!r}",
                                   where=where, fix="restore config.json from the model's source")
        return cls(
            vocab_size=int(need("vocab_size")), hidden_size=hidden, intermediate_size=int(need("intermediate_size")),
            num_layers=int(need("num_hidden_layers")), num_heads=heads, num_kv_heads=kv,
            rms_norm_eps=float(need("rms_norm_eps")), rope_theta=float(theta),
            max_position_embeddings=int(cfg.get("max_position_embeddings") or 2048),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)), rope_linear_factor=factor,
            bos_token_id=token_id("bos_token_id"), eos_token_id=token_id("eos_token_id"),
            pad_token_id=token_id("pad_token_id"),
            sliding_window=window if window is not None and window < ctx else None,
        )

    def hf_config(self, torch_dtype: str) -> dict[str, Any]:
        """``config.json`` in the classic layout of Llama-2 repositories (transformers reads it)."""
        return {
            "architectures": ["LlamaForCausalLM"],
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "initializer_range": 0.02,
            "intermediate_size": self.intermediate_size,
            "max_position_embeddings": self.max_position_embeddings,
            "model_type": "llama",
            "num_attention_heads": self.num_heads,
            "num_hidden_layers": self.num_layers,
            "num_key_value_heads": self.num_kv_heads,
            "pad_token_id": self.pad_token_id,
            "pretraining_tp": 1,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_scaling": None if self.rope_linear_factor is None else {"type": "linear",
                                                                          "factor": self.rope_linear_factor},
            "rope_theta": self.rope_theta,
            "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": torch_dtype,
            "use_cache": True,
            "vocab_size": self.vocab_size,
        }

    def meta_params(self) -> dict[str, Any]:
        """``params.json`` as Meta writes it (vocab_size -1; n_kv_heads / rope_theta only when set)."""
        return meta_params_json(self.hidden_size, self.intermediate_size, self.num_heads, self.num_kv_heads,
                                self.num_layers, self.rms_norm_eps, self.rope_theta)


def meta_params_json(dim: int, ffn_size: int, n_heads: int, n_kv_heads: int, n_layers: int, norm_eps: float,
                     rope_theta: float) -> dict[str, Any]:
    """``params.json`` as Meta writes it, keys in Meta's order (vocab_size -1; n_kv_heads only
    for grouped-query attention, rope_theta only when not the default)."""
    ffn = meta_ffn_params(dim, ffn_size)
    params: dict[str, Any] = {"dim": dim, "multiple_of": ffn["multiple_of"]}
    if "ffn_dim_multiplier" in ffn:
        params["ffn_dim_multiplier"] = ffn["ffn_dim_multiplier"]
    params["n_heads"] = n_heads
    if n_kv_heads != n_heads:
        params["n_kv_heads"] = n_kv_heads
    params["n_layers"] = n_layers
    params["norm_eps"] = norm_eps
    if rope_theta != DEFAULT_ROPE_THETA:
        params["rope_theta"] = rope_theta
    params["vocab_size"] = -1
    return params


def meta_ffn_params(dim: int, hidden: int) -> dict[str, Any]:
    """``multiple_of`` (and ``ffn_dim_multiplier`` when needed) for which Meta's FFN-size rule
    (``h = int(8*dim/3)``, ``h = int(mult*h)``, round ``h`` up to ``multiple_of``) gives
    ``hidden``: the plain rule with the usual multiples first (LLaMA-1/2 7B-34B), then the
    multipliers Meta used (Llama-2 70B: 1.3 with 4096), then an exact fallback."""
    base = int(2 * 4 * dim / 3)

    def size(multiple_of: int, mult: float | None) -> int:
        h = int(mult * base) if mult is not None else base
        return multiple_of * ((h + multiple_of - 1) // multiple_of)

    multiples = [4096, 2048, 1024, 512, 256, 128, 64, 32, 16, 8, 4, 2, 1]
    for m in multiples[4:]:
        if size(m, None) == hidden:
            return {"multiple_of": m}
    for mult in (1.3, 1.5, 2.0, 1.0):
        for m in multiples:
            if size(m, mult) == hidden:
                return {"multiple_of": m, "ffn_dim_multiplier": mult}
    return {"multiple_of": hidden, "ffn_dim_multiplier": hidden / base}


# ---- rotary permutation and names ---------------------------------------------------------------
ArrayT = TypeVar("ArrayT", "torch.Tensor", "np.ndarray")


def permute_meta_to_hf(w: ArrayT, n_heads: int) -> ArrayT:
    """Rows of a q/k projection from Meta's interleaved rotary pairs to HF's half-split layout
    (torch tensor or numpy array)."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute_hf_to_meta(w: ArrayT, n_heads: int) -> ArrayT:
    """Inverse of :func:`permute_meta_to_hf` (GGUF's llama layout is Meta's)."""
    rows = w.shape[0]
    return w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# per-layer parts: HF suffix, Meta suffix, GGUF suffix
LAYER_PARTS: tuple[tuple[str, str, str], ...] = (
    ("self_attn.q_proj", "attention.wq", "attn_q"),
    ("self_attn.k_proj", "attention.wk", "attn_k"),
    ("self_attn.v_proj", "attention.wv", "attn_v"),
    ("self_attn.o_proj", "attention.wo", "attn_output"),
    ("mlp.gate_proj", "feed_forward.w1", "ffn_gate"),
    ("mlp.down_proj", "feed_forward.w2", "ffn_down"),
    ("mlp.up_proj", "feed_forward.w3", "ffn_up"),
    ("input_layernorm", "attention_norm", "attn_norm"),
    ("post_attention_layernorm", "ffn_norm", "ffn_norm"),
)
GLOBAL_PARTS: tuple[tuple[str, str, str], ...] = (
    ("model.embed_tokens", "tok_embeddings", "token_embd"),
    ("model.norm", "norm", "output_norm"),
    ("lm_head", "output", "output"),
)

#: Meta model-parallel split dimension by Meta suffix (None: replicated on every shard).
META_SPLIT_DIM: dict[str, int | None] = {
    "tok_embeddings": 1, "attention.wo": 1, "feed_forward.w2": 1,
    "attention.wq": 0, "attention.wk": 0, "attention.wv": 0, "feed_forward.w1": 0, "feed_forward.w3": 0,
    "output": 0, "attention_norm": None, "ffn_norm": None, "norm": None,
}


@dataclass(frozen=True)
class TensorName:
    """One LLaMA tensor under its three names, with its expected shape."""

    hf: str
    meta: str
    gguf: str
    shape: tuple[int, ...]
    meta_split: int | None
    qk_heads: int | None = None  # rotary-permuted rows: number of heads (kv heads for k)


def llama_tensors(hp: LlamaHParams) -> list[TensorName]:
    """Every weight of a LLaMA with ``hp``, in checkpoint order (embeddings, layers, norm, head)."""
    h, f, kv = hp.hidden_size, hp.intermediate_size, hp.num_kv_heads * hp.head_dim
    shapes = {"self_attn.q_proj": (h, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
              "self_attn.o_proj": (h, h), "mlp.gate_proj": (f, h), "mlp.down_proj": (h, f), "mlp.up_proj": (f, h),
              "input_layernorm": (h,), "post_attention_layernorm": (h,)}
    heads = {"self_attn.q_proj": hp.num_heads, "self_attn.k_proj": hp.num_kv_heads}
    emb, norm, head = GLOBAL_PARTS
    out = [TensorName(f"{emb[0]}.weight", f"{emb[1]}.weight", f"{emb[2]}.weight", (hp.vocab_size, h), 1)]
    for i in range(hp.num_layers):
        for hf, meta, gg in LAYER_PARTS:
            out.append(TensorName(f"model.layers.{i}.{hf}.weight", f"layers.{i}.{meta}.weight",
                                  f"blk.{i}.{gg}.weight", shapes[hf], META_SPLIT_DIM[meta], heads.get(hf)))
    out.append(TensorName(f"{norm[0]}.weight", f"{norm[1]}.weight", f"{norm[2]}.weight", (h,), None))
    if not hp.tie_word_embeddings:
        out.append(TensorName(f"{head[0]}.weight", f"{head[1]}.weight", f"{head[2]}.weight", (hp.vocab_size, h), 0))
    return out


#: tensors that old checkpoints carry and the converters drop (recomputed from config).
IGNORED_TENSOR = re.compile(r"(^|\.)rotary_emb\.inv_freq$|^rope\.freqs$")


# ---- an HF folder's tensors against its config.json (the transformers engine) ------------------------
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


def expected_hf_shapes(cfg: HFLlamaConfig, raw: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every tensor ``LlamaForCausalLM`` builds for ``cfg``, with its shape (biases when
    ``attention_bias``/``mlp_bias`` ask for them; ``lm_head`` unless the embeddings are tied)."""
    h, f = cfg.hidden_size, cfg.intermediate_size
    heads = cfg.num_attention_heads
    head_dim = cfg.head_dim or h // heads
    q, kv = heads * head_dim, (cfg.num_key_value_heads or heads) * head_dim
    per_layer: dict[str, tuple[int, ...]] = {
        "self_attn.q_proj.weight": (q, h), "self_attn.k_proj.weight": (kv, h), "self_attn.v_proj.weight": (kv, h),
        "self_attn.o_proj.weight": (h, q), "mlp.gate_proj.weight": (f, h), "mlp.up_proj.weight": (f, h),
        "mlp.down_proj.weight": (h, f), "input_layernorm.weight": (h,), "post_attention_layernorm.weight": (h,)}
    if raw.get("attention_bias"):
        per_layer |= {"self_attn.q_proj.bias": (q,), "self_attn.k_proj.bias": (kv,), "self_attn.v_proj.bias": (kv,),
                      "self_attn.o_proj.bias": (h,)}
    if raw.get("mlp_bias"):
        per_layer |= {"mlp.gate_proj.bias": (f,), "mlp.up_proj.bias": (f,), "mlp.down_proj.bias": (h,)}
    out = {"model.embed_tokens.weight": (cfg.vocab_size, h), "model.norm.weight": (h,)}
    for i in range(cfg.num_hidden_layers):
        out |= {f"model.layers.{i}.{k}": v for k, v in per_layer.items()}
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = (cfg.vocab_size, h)
    return out


def check_hf_tensors(folder: Path, cfg: HFLlamaConfig, raw: Mapping[str, Any],
                     stored: Sequence[tuple[str, tuple[int, ...]]]) -> None:
    """The stored tensors must be exactly the ones ``config.json`` implies, with their shapes:
    transformers would otherwise fill a missing tensor with random numbers, drop an unexpected
    one, or build a different number of layers than the checkpoint holds, and run anyway."""
    where = folder / "config.json"
    have = {name: shape for name, shape in stored if not IGNORED_TENSOR.search(name)}
    layers = {int(m.group(1)) for n in have if (m := _LAYER.match(n))}
    if layers and max(layers) + 1 != cfg.num_hidden_layers:
        raise CorruptFileError(f"config.json says num_hidden_layers {cfg.num_hidden_layers} but the weights hold "
                               f"{max(layers) + 1} layers", where=where,
                               fix="set num_hidden_layers to the stored layer count, or restore the missing shards")
    want = expected_hf_shapes(cfg, raw)
    if cfg.tie_word_embeddings:
        have.pop("lm_head.weight", None)
    missing = [n for n in want if n not in have]
    if missing:
        raise CorruptFileError(f"{len(missing)} tensor(s) that config.json implies are missing from the weights "
                               f"(e.g. {missing[:2]}); they would run as random numbers", where=folder,
                               fix="download the complete checkpoint (every shard)")
    extra = sorted(set(have) - set(want))
    if extra:
        raise CorruptFileError(f"{len(extra)} tensor(s) in the weights are not part of the LLaMA that config.json "
                               f"describes (e.g. {extra[:2]})", where=folder,
                               fix="use the config.json that belongs to these weights")
    for name, shape in want.items():
        if tuple(have[name]) != shape:
            raise CorruptFileError(f"tensor {name!r} has shape {list(have[name])}, config.json implies {list(shape)}",
                                   where=folder, fix="use the config.json that belongs to these weights")


def check_hf_folder(folder: Path) -> tuple[dict[str, Any], HFLlamaConfig]:
    """Everything transformers would read from an HF LLaMA folder, checked before it does:
    ``config.json`` (bounded numbers), the weight files (index, shards, safetensors headers)
    and the stored tensors against the config. Returns the raw and the validated config."""
    raw, checked = read_hf_config(folder)
    weights = HFFolder(folder)
    check_hf_tensors(folder, checked, raw, weights.tensor_shapes())
    weights.release()
    return raw, checked


# ---- HuggingFace folders -------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: str  # safetensors name: F32, F16, BF16
    file: Path
    offset: int = 0  # safetensors: absolute offset of the data in the file


def torch_dtype_of(name: str) -> torch.dtype:
    import torch

    return {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[name]


def dtype_name(dt: torch.dtype) -> str | None:
    import torch

    return {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}.get(dt)


def _unsupported_dtype(dtype: str, name: str, where: Path) -> ConversionError:
    return ConversionError(f"tensor {name!r} has dtype {dtype}; the LLaMA converters read F32, F16 and BF16",
                           where=where, fix="dequantize or cast the checkpoint to float16/bfloat16/float32 first")


class HFCheckpoint:
    """A HuggingFace LLaMA folder, validated when opened and read tensor by tensor.

    Finding the weight files and checking them against their index is
    :class:`openllm_hub.engines.hf_folder.HFFolder`'s; this adds LLaMA's checks (dtypes,
    data sizes, every expected tensor with the shape ``config.json`` implies) and row-range
    reads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise NotFoundError("HuggingFace checkpoint folder not found", where=self.path)
        self.config: dict[str, Any] = read_json(self.path / "config.json")
        self.hparams = LlamaHParams.from_hf_config(self.config, self.path / "config.json")
        self.folder = HFFolder(self.path)
        self.files, self.format = self.folder.files, self.folder.kind
        self.infos: dict[str, TensorInfo] = {}
        for file in self.files:
            self._scan(file)
        self.tensors = self._check_tensors()

    def _scan(self, file: Path) -> None:
        if self.format == "safetensors":
            header = read_safetensors_header(file)
            with file.open("rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
            for name, meta in header.items():
                if name == "__metadata__" or IGNORED_TENSOR.search(name):
                    continue
                shape = tuple(int(x) for x in meta["shape"])
                begin, end = (int(x) for x in meta["data_offsets"])
                dtype = str(meta["dtype"])
                if dtype not in SUPPORTED_DTYPES:
                    raise _unsupported_dtype(dtype, name, file)
                count = 1
                for d in shape:
                    count *= d
                if end - begin != count * SUPPORTED_DTYPES[dtype]:
                    raise CorruptFileError(f"tensor {name!r}: data size does not match its shape", where=file,
                                           fix="download or convert the file again")
                self.infos[name] = TensorInfo(shape, dtype, file, 8 + n + begin)
        else:
            for name, t in self.folder.shard(file).items():
                if IGNORED_TENSOR.search(name):
                    continue
                dt = dtype_name(t.dtype)
                if dt is None:
                    raise _unsupported_dtype(str(t.dtype), name, file)
                self.infos[name] = TensorInfo(tuple(t.shape), dt, file)
            self.folder.release()

    def _check_tensors(self) -> list[TensorName]:
        hp = self.hparams
        emb = self.infos.get("model.embed_tokens.weight")
        if emb is not None and len(emb.shape) == 2 and emb.shape[0] != hp.vocab_size:
            raise CorruptFileError(f"config.json says vocab_size {hp.vocab_size} but the embedding has "
                                   f"{emb.shape[0]} rows", where=self.path, fix="fix vocab_size in config.json")
        expected = llama_tensors(hp)
        known = {t.hf for t in expected}
        for t in expected:
            info = self.infos.get(t.hf)
            if info is None:
                raise CorruptFileError(f"tensor {t.hf!r} is missing from the checkpoint", where=self.path)
            if info.shape != t.shape:
                raise CorruptFileError(f"tensor {t.hf!r} has shape {list(info.shape)}, config.json implies "
                                       f"{list(t.shape)}", where=info.file)
        extra = sorted(set(self.infos) - known - ({"lm_head.weight"} if hp.tie_word_embeddings else set()))
        if extra:
            raise ConversionError(f"unexpected tensors for a LLaMA checkpoint: {extra[:5]}", where=self.path)
        return expected

    @property
    def source_dtype(self) -> str:
        """The dtype most weights have (F32, F16 or BF16)."""
        counts: dict[str, int] = {}
        for t in self.tensors:
            info = self.infos[t.hf]
            counts[info.dtype] = counts.get(info.dtype, 0) + 1
        return max(counts, key=lambda k: counts[k])

    def read(self, name: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Rows ``start:stop`` (dim 0) of tensor ``name``, in its stored dtype."""
        import torch

        info = self.infos[name]
        rows = info.shape[0] if info.shape else 1
        stop = rows if stop is None else min(stop, rows)
        if self.format == "bin":
            t = self.folder.shard(info.file)[name]
            t = t[start:stop] if t.dim() else t
            check_finite(name, t, info.file)
            return t
        row_elems = 1
        for d in info.shape[1:]:
            row_elems *= d
        item = SUPPORTED_DTYPES[info.dtype]
        nbytes = (stop - start) * row_elems * item
        buf = bytearray(nbytes)
        with info.file.open("rb", buffering=0) as fh:
            _read_into(fh, memoryview(buf), info.offset + start * row_elems * item, info.file)
        t = torch.frombuffer(buf, dtype=torch_dtype_of(info.dtype)) if nbytes else \
            torch.empty(0, dtype=torch_dtype_of(info.dtype))
        check_finite(name, t, info.file)  # converters and mergers never carry NaN/Inf weights along
        return t.reshape((stop - start, *info.shape[1:]) if info.shape else ())

    def read_numpy(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows ``start:stop`` of tensor ``name`` as a numpy array: float32 / float16, or the raw
        ``uint16`` bits of bfloat16 (numpy has no bfloat16). Safetensors sources are read
        without importing torch."""
        import numpy as np

        info = self.infos[name]
        if self.format == "bin":
            import torch

            t = self.read(name, start, stop).contiguous()
            return t.view(torch.int16).numpy().view(np.uint16) if info.dtype == "BF16" else t.numpy()
        rows = info.shape[0] if info.shape else 1
        stop = rows if stop is None else min(stop, rows)
        row_elems = 1
        for d in info.shape[1:]:
            row_elems *= d
        item = SUPPORTED_DTYPES[info.dtype]
        np_dtype = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}[info.dtype]
        out = np.empty((stop - start) * row_elems, dtype=np_dtype)
        if out.size:
            with info.file.open("rb", buffering=0) as fh:
                _read_into(fh, out.view(np.uint8).data, info.offset + start * row_elems * item, info.file)
            finite = bool(((out & 0x7F80) != 0x7F80).all()) if info.dtype == "BF16" else bool(np.isfinite(out).all())
            if not finite:
                raise CorruptFileError(f"tensor {name!r} holds NaN or Inf values", where=info.file,
                                       fix="the weights are damaged; download or convert the checkpoint again")
        return out.reshape((stop - start, *info.shape[1:]) if info.shape else ())

    def release(self) -> None:
        """Drop the memory-mapped ``.bin`` shard held for reading."""
        self.folder.release()


def _read_into(fh: BinaryIO, view: memoryview, offset: int, where: Path) -> None:
    done = 0
    fd = fh.fileno()
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n <= 0:
            raise CorruptFileError("file ends inside tensor data (truncated?)", where=where,
                                   fix="download or convert the file again")
        done += n


def row_chunks(shape: Sequence[int], itemsize: int, budget: int = 32 << 20) -> Iterator[tuple[int, int]]:
    """Row ranges of a tensor, each about ``budget`` bytes (at least one row)."""
    rows = shape[0] if shape else 1
    row_bytes = itemsize
    for d in shape[1:]:
        row_bytes *= d
    step = max(1, budget // max(1, row_bytes))
    for s in range(0, rows, step):
        yield s, min(rows, s + step)


# ---- Meta checkpoints ------------------------------------------------------------------------------
_SHARD = re.compile(r"^consolidated\.(\d+)\.pth$")


class MetaCheckpoint:
    """An original Meta checkpoint: ``params.json`` + ``consolidated.NN.pth`` shards."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise NotFoundError("Meta checkpoint folder not found", where=self.path)
        self.params: dict[str, Any] = read_json(self.path / "params.json")
        found = sorted((int(m.group(1)), p) for p in self.path.iterdir() if (m := _SHARD.match(p.name)))
        if not found:
            raise NotFoundError("no consolidated.NN.pth shards", where=self.path)
        numbers = [n for n, _ in found]
        if numbers != list(range(len(found))):
            missing = sorted(set(range(max(numbers) + 1)) - set(numbers))
            raise NotFoundError(f"model-parallel shard(s) missing: {[f'consolidated.{i:02d}.pth' for i in missing]}",
                                where=self.path, fix="download every consolidated.NN.pth shard")
        self.shard_files = [p for _, p in found]
        self.shards = [load_torch_checkpoint(p, mmap=True) for p in self.shard_files]
        names = [sorted(n for n in s if not IGNORED_TENSOR.search(n)) for s in self.shards]
        for i, n in enumerate(names[1:], 1):
            if n != names[0]:
                raise CorruptFileError("shards hold different tensor names", where=self.shard_files[i],
                                       fix="all shards must come from the same checkpoint")
        self.hparams = self._hparams()
        self.tensors = llama_tensors(self.hparams)
        for t in self.tensors:
            if t.meta not in self.shards[0]:
                raise CorruptFileError(f"tensor {t.meta!r} is missing", where=self.shard_files[0])
            if self.merged_shape(t) != t.shape:
                raise CorruptFileError(f"tensor {t.meta!r} merges to shape {list(self.merged_shape(t))}, params.json "
                                       f"implies {list(t.shape)}", where=self.path,
                                       fix="check that every consolidated.NN.pth shard is present and complete")

    def _piece_shapes(self, meta_name: str) -> list[tuple[int, ...]]:
        return [tuple(s[meta_name].shape) for s in self.shards]

    def merged_shape(self, t: TensorName) -> tuple[int, ...]:
        shapes = self._piece_shapes(t.meta)
        if t.meta_split is None:
            if len(set(shapes)) != 1:
                raise CorruptFileError(f"replicated tensor {t.meta!r} differs in shape between shards", where=self.path)
            return shapes[0]
        d = t.meta_split
        others = {s[:d] + s[d + 1:] for s in shapes}
        if len(others) != 1:
            raise CorruptFileError(f"shards of {t.meta!r} do not fit together: {shapes}", where=self.path)
        first = shapes[0]
        return (*first[:d], sum(s[d] for s in shapes), *first[d + 1:])

    def _hparams(self) -> LlamaHParams:
        p = self.params
        where = self.path / "params.json"
        for key in ("dim", "n_heads", "n_layers", "norm_eps"):
            if key not in p:
                raise CorruptFileError(f"params.json lacks {key!r}", where=where,
                                       fix="restore params.json from the model's source")
        parse_config(MetaParams, p, where)
        s0 = self.shards[0]
        if "tok_embeddings.weight" not in s0 or "layers.0.feed_forward.w1.weight" not in s0:
            raise CorruptFileError("shards lack tok_embeddings / feed_forward weights", where=self.shard_files[0])
        vocab = int(s0["tok_embeddings.weight"].shape[0])
        if int(p.get("vocab_size", -1)) not in (-1, vocab):
            raise CorruptFileError(f"params.json vocab_size {p['vocab_size']} disagrees with the embedding's "
                                   f"{vocab} rows", where=where)
        ffn = sum(int(s["layers.0.feed_forward.w1.weight"].shape[0]) for s in self.shards)
        heads = int(p["n_heads"])
        eps = float(p["norm_eps"])
        # Meta's code takes the context length at run time; LLaMA-1 (norm_eps 1e-6) was trained on
        # 2048 tokens, Llama-2 (1e-5) on 4096, as HuggingFace's conversion script records.
        ctx = int(p.get("max_seq_len") or (4096 if eps >= 1e-5 else 2048))
        return LlamaHParams(vocab_size=vocab, hidden_size=int(p["dim"]), intermediate_size=ffn,
                            num_layers=int(p["n_layers"]), num_heads=heads,
                            num_kv_heads=int(p.get("n_kv_heads") or heads), rms_norm_eps=eps,
                            rope_theta=float(p.get("rope_theta", DEFAULT_ROPE_THETA)), max_position_embeddings=ctx)

    def merged(self, t: TensorName) -> torch.Tensor:
        """The full tensor, concatenated from the model-parallel pieces."""
        import torch

        pieces = [s[t.meta] for s in self.shards]
        for i, piece in enumerate(pieces):
            check_finite(t.meta, piece, self.shard_files[i])
        if t.meta_split is None:
            for i, piece in enumerate(pieces[1:], 1):
                if not torch.equal(piece, pieces[0]):
                    raise CorruptFileError(f"replicated tensor {t.meta!r} differs between shards",
                                           where=self.shard_files[i])
            return pieces[0]
        return torch.cat(pieces, dim=t.meta_split)

    @property
    def source_dtype(self) -> torch.dtype:
        return self.shards[0]["tok_embeddings.weight"].dtype

    def with_context(self, ctx: int | None) -> None:
        if ctx:
            self.hparams = replace(self.hparams, max_position_embeddings=int(ctx))
