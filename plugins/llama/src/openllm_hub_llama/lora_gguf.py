"""PEFT LoRA adapter -> GGUF LoRA adapter, for llama.cpp to apply at run time without merging:
``load(base.gguf, lora=[("adapter.gguf", 1.0)])``.

The file is what llama.cpp's ``convert_lora_to_gguf.py`` writes for a LLaMA adapter:
``general.architecture=llama``, ``general.type=adapter``, ``adapter.type=lora``,
``adapter.lora.alpha``, and per adapted weight ``<gguf tensor name>.lora_a`` (shape
``(r, in)``) and ``.lora_b`` (``(out, r)``), with B's rows of ``attn_q`` / ``attn_k`` permuted
to GGUF's (Meta's) rotary layout as the base weights are (:func:`checkpoint.permute_hf_to_meta`;
the delta ``B @ A`` then permutes like the weight). A LoRA on ``embed_tokens`` is written the
way llama.cpp's embedding lookup reads it (A and B swapped: ``lora_a`` ``(vocab, r)``,
``lora_b`` ``(hidden, r)``).

llama.cpp scales each pair by ``user_scale * alpha / r``; rsLoRA's ``alpha / sqrt(r)`` is
written as the equivalent ``alpha * sqrt(r)``.

Adapters that carry full weights (``modules_to_save``, e.g. Chinese-LLaMA's extended
``embed_tokens`` / ``lm_head``) cannot run this way — a llama.cpp adapter only holds low-rank
pairs — and are refused with a pointer to ``merge-lora``. A ``base_layer`` copy of an
embedding that PEFT saves next to an embedding LoRA is skipped when its shape is the base's
(it is the frozen base weight), as llama.cpp's converter does.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openllm_hub.plugin import (
    ConversionError,
    InvalidParameterError,
    NotFoundError,
    atomic_output,
    check_destination,
    read_gguf_metadata,
    read_json,
)
from openllm_hub_llama.checkpoint import LlamaHParams, MetaCheckpoint, llama_tensors, permute_hf_to_meta
from openllm_hub_llama.lora_adapter import EMBED, PeftLoraAdapter, check_pair_shape, check_targets, read_adapter

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

OUTTYPES = ("f32", "f16")


def base_hparams(base: str | Path) -> LlamaHParams:
    """The architecture of a LLaMA base given as a GGUF file, a HuggingFace folder or a Meta
    checkpoint (only headers and configs are read)."""
    p = Path(base)
    if p.is_file():
        meta = read_gguf_metadata(p)
        if meta.get("general.architecture") != "llama" or meta.get("general.type", "model") != "model":
            raise InvalidParameterError("the base GGUF is not a LLaMA model", where=p,
                                        fix="pass the GGUF base model the adapter is for")

        def need(key: str) -> Any:
            if f"llama.{key}" not in meta:
                raise ConversionError(f"the GGUF base lacks llama.{key}", where=p)
            return meta[f"llama.{key}"]

        tokens = meta.get("tokenizer.ggml.tokens")
        vocab: Any = meta.get("llama.vocab_size") or (tokens.get("__array_len__") if isinstance(tokens, dict)
                                                      else len(tokens or []))
        heads = int(need("attention.head_count"))
        return LlamaHParams(vocab_size=int(vocab), hidden_size=int(need("embedding_length")),
                            intermediate_size=int(need("feed_forward_length")), num_layers=int(need("block_count")),
                            num_heads=heads, num_kv_heads=int(meta.get("llama.attention.head_count_kv", heads)),
                            rms_norm_eps=float(meta.get("llama.attention.layer_norm_rms_epsilon", 1e-6)),
                            tie_word_embeddings=not _gguf_has_tensor(p, "output.weight"))
    if (p / "config.json").is_file():
        return LlamaHParams.from_hf_config(read_json(p / "config.json"), p / "config.json")
    if (p / "params.json").is_file():
        return MetaCheckpoint(p).hparams
    raise NotFoundError("base model not found (a GGUF file, a HuggingFace folder or a Meta checkpoint)", where=p)


def _gguf_has_tensor(path: Path, name: str) -> bool:
    import gguf

    return any(t.name == name for t in gguf.GGUFReader(str(path)).tensors)


def _np(t: torch.Tensor, outtype: str) -> np.ndarray:
    import torch

    return t.to(torch.float16 if outtype == "f16" else torch.float32).contiguous().numpy()


def gguf_adapter_tensors(ad: PeftLoraAdapter, hp: LlamaHParams, outtype: str = "f32") -> dict[str, np.ndarray]:
    """The ``.lora_a`` / ``.lora_b`` tensors of ``ad`` for a base with ``hp``, after checking
    that every pair fits the base and that the adapter holds no full weights."""
    tensors = {t.hf: t for t in llama_tensors(hp)}
    shapes = {name: t.shape for name, t in tensors.items()}
    check_targets(ad, shapes)
    for name, pair in ad.pairs.items():
        check_pair_shape(ad, pair, shapes[name])
    for name, kind in ad.full_kind.items():
        full_shape = tuple(ad.full[name].shape)
        if kind == "base_layer" and full_shape == shapes[name]:
            continue
        if full_shape[1:] != shapes[name][1:]:
            raise ConversionError(f"adapter does not fit the base: its copy of {name} is "
                                  f"{'x'.join(map(str, full_shape))}, the base's is "
                                  f"{'x'.join(map(str, shapes[name]))}", where=ad.path,
                                  fix="use the base model this adapter was trained on")
        raise ConversionError(
            f"the adapter carries full weights for {name.removesuffix('.weight')} ("
            + ("an extended vocabulary, " if full_shape[0] != shapes[name][0] else "")
            + "modules_to_save); a llama.cpp LoRA adapter holds only low-rank pairs, so it cannot be applied "
            "at run time", where=ad.path,
            fix="merge it into the base instead: openllm-hub merge-lora BASE ADAPTER -o OUT "
                "(then openllm-hub convert OUT OUT.gguf --to gguf)")
    out: dict[str, np.ndarray] = {}
    for name, pair in ad.pairs.items():
        t = tensors[name]
        a, b = pair.a, pair.b
        if t.qk_heads is not None:
            b = permute_hf_to_meta(b, t.qk_heads)
        if name == EMBED:
            lora_a, lora_b = b, a.t()  # llama.cpp's embedding lookup: rows of lora_a, then lora_b
        else:
            lora_a, lora_b = a, b
        out[f"{t.gguf}.lora_a"] = _np(lora_a, outtype)
        out[f"{t.gguf}.lora_b"] = _np(lora_b, outtype)
    if not out:
        raise ConversionError("the adapter has no LoRA pairs", where=ad.path)
    return out


def effective_alpha(ad: PeftLoraAdapter) -> float:
    """The ``adapter.lora.alpha`` for which llama.cpp's ``alpha / r`` equals the adapter's scale."""
    alpha = ad.alpha * math.sqrt(ad.r) if ad.use_rslora else ad.alpha
    if alpha == 0:
        raise ConversionError("lora_alpha is 0: the adapter changes nothing (and llama.cpp reads alpha 0 as "
                              "'no alpha')", where=ad.path)
    return alpha


def write_gguf_adapter(adapter: str | Path, base: str | Path, dst: Path, outtype: str = "f32") -> None:
    """Write the GGUF form of the PEFT adapter in folder ``adapter`` (for ``base``) to ``dst``."""
    import gguf

    if outtype not in OUTTYPES:
        raise InvalidParameterError(f"unknown outtype {outtype!r} for a GGUF adapter", where="outtype",
                                    fix=f"use one of: {', '.join(OUTTYPES)}")
    ad = read_adapter(adapter)
    hp = base_hparams(base)
    tensors = gguf_adapter_tensors(ad, hp, outtype)
    alpha = effective_alpha(ad)
    writer = gguf.GGUFWriter(str(dst), "llama")
    try:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        writer.add_name(Path(adapter).resolve().name)
        writer.add_file_type(int(gguf.LlamaFileType.MOSTLY_F16 if outtype == "f16" else gguf.LlamaFileType.ALL_F32))
        for name, arr in tensors.items():
            writer.add_tensor(name, arr)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


def convert_adapter_to_gguf(adapter: str | Path, base: str | Path, dst: str | Path, *, outtype: str = "f32",
                            force: bool = False) -> Path:
    """Convert a PEFT LoRA adapter folder to a GGUF LoRA file at ``dst`` for the LLaMA ``base``
    (GGUF file, HF folder or Meta checkpoint: only its architecture is read). Everything is
    checked before the file appears; it is written under a temporary name and renamed."""
    out = check_destination(dst, sources=[adapter, base], force=force)
    with atomic_output(out, force=force) as tmp:
        write_gguf_adapter(adapter, base, tmp, outtype)
    return out
