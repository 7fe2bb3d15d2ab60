"""The llama family's memory as data, for the core planner (``openllm-hub plan``) and the early
refusal in ``load()``: shapes from config alone -- a HuggingFace ``config.json``, Meta's
``params.json`` or a GGUF file's header metadata -- never the weights.

A LLaMA layer: q, k, v, o projections (k and v narrower under grouped-query attention), the
SwiGLU gate, up and down matrices, two RMS norms, no biases. The KV cache holds
``2 * kv_heads * head_dim`` values per token and layer. A GGUF file is stored quantized (or
f16/f32); its bits per weight come from its size.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from openllm_hub.plugin import (
    CorruptFileError,
    InvalidParameterError,
    ModelSpec,
    gguf_dims,
    read_gguf_metadata,
    stored_as,
)

#: Meta's params.json has vocab_size -1 (the tokenizer decides); LLaMA's tokenizer has 32,000 pieces.
LLAMA_VOCAB = 32000


def spec(name: str, *, layers: int, hidden: int, heads: int, kv_heads: int | None = None, vocab: int, inner: int,
         seq: int = 2048, tied: bool = False, stored_bits: int | None = None, dtype_bytes: int = 2,
         notes: str = "") -> ModelSpec:
    """A LLaMA-shaped spec from its dimensions."""
    h = hidden
    kv = h // heads * (kv_heads or heads)
    return ModelSpec(
        name=name, family="llama", num_layers=layers, hidden_size=h, num_heads=heads, vocab_size=vocab, max_seq=seq,
        layer_matrices=((h, h), (kv, h), (kv, h), (h, h), (inner, h), (inner, h), (h, inner)), layer_small=2 * h,
        embedding_params=vocab * h * (1 if tied else 2), mlp_width=2 * inner, kv_per_token_layer=2 * kv,
        notes=notes, stored_bits=stored_bits, dtype_bytes=dtype_bytes)


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptFileError(f"cannot read JSON: {exc}", where=path) from None
    if not isinstance(data, dict):
        raise CorruptFileError("expected a JSON object", where=path)
    return data


def from_hf_config(d: dict[str, Any], name: str, where: Path) -> ModelSpec:
    try:
        return spec(name, layers=int(d["num_hidden_layers"]), hidden=int(d["hidden_size"]),
                    heads=int(d["num_attention_heads"]), kv_heads=d.get("num_key_value_heads"),
                    vocab=int(d["vocab_size"]), inner=int(d["intermediate_size"]),
                    seq=int(d.get("max_position_embeddings") or 2048), tied=bool(d.get("tie_word_embeddings")))
    except KeyError as exc:
        raise InvalidParameterError(f"config.json lacks {exc}", where=where) from None
    except (TypeError, ValueError, ZeroDivisionError) as exc:
        raise InvalidParameterError(f"config.json has an invalid size: {exc}", where=where) from None


def meta_ffn_size(dim: int, multiple_of: int, multiplier: float | None) -> int:
    """Meta's FFN width rule: ``int(8 * dim / 3)``, times the multiplier, rounded up to ``multiple_of``."""
    h = int(2 * 4 * dim / 3)
    if multiplier is not None:
        h = int(multiplier * h)
    return multiple_of * ((h + multiple_of - 1) // multiple_of)


def from_meta_params(p: dict[str, Any], name: str, where: Path) -> ModelSpec:
    try:
        dim, heads = int(p["dim"]), int(p["n_heads"])
        vocab = int(p.get("vocab_size", -1))
        return spec(name, layers=int(p["n_layers"]), hidden=dim, heads=heads, kv_heads=p.get("n_kv_heads"),
                    vocab=vocab if vocab > 0 else LLAMA_VOCAB,
                    inner=meta_ffn_size(dim, int(p.get("multiple_of", 256)), p.get("ffn_dim_multiplier")),
                    seq=int(p.get("max_seq_len") or 2048))
    except KeyError as exc:
        raise InvalidParameterError(f"params.json lacks {exc}", where=where) from None
    except (TypeError, ValueError, ZeroDivisionError) as exc:
        raise InvalidParameterError(f"params.json has an invalid size: {exc}", where=where) from None


def from_gguf(path: Path) -> ModelSpec:
    d = gguf_dims(read_gguf_metadata(path), path)
    base = spec(str(path), layers=d["layers"], hidden=d["hidden"], heads=d["heads"], kv_heads=d["kv_heads"],
                vocab=d["vocab"], inner=d["ffn"], seq=d["context"])
    return stored_as(base, path)


def read(path: Path, fmt: str) -> ModelSpec:
    """The family's ``memory`` hook: ``hf`` (config.json), ``meta`` (params.json) or ``gguf``."""
    if fmt == "gguf":
        return from_gguf(path)
    folder = path if path.is_dir() else path.parent
    if fmt == "meta":
        return from_meta_params(_json(folder / "params.json"), str(path), folder / "params.json")
    return from_hf_config(_json(folder / "config.json"), str(path), folder / "config.json")


#: ``openllm-hub plan llama-7b`` with no checkpoint: LLaMA-1's published sizes.
PUBLISHED: dict[str, ModelSpec] = {
    f"llama-{size}": spec(f"llama-{size}", layers=layers, hidden=hidden, heads=heads, vocab=LLAMA_VOCAB, inner=inner)
    for size, layers, hidden, heads, inner in (("7b", 32, 4096, 32, 11008), ("13b", 40, 5120, 40, 13824),
                                               ("30b", 60, 6656, 52, 17920), ("65b", 80, 8192, 64, 22016))
}
