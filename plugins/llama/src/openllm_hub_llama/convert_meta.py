"""Meta ``consolidated.NN.pth`` <-> HuggingFace LLaMA folders, and the cached meta -> hf
conversion that ``load(..., convert=True)`` uses.

meta -> hf merges the model-parallel pieces one tensor at a time (shards memory-mapped),
undoes the rotary q/k permutation (kv heads for k) and streams the result into sharded
safetensors with their index. hf -> meta re-permutes and re-splits exactly as Meta's code
splits (``torch.tensor_split``: uneven splits allowed), writing one shard at a time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openllm_hub.engines.hf_folder import SafetensorsWriter, shard_file_name, write_index
from openllm_hub.plugin import (
    ConvertRequest,
    InvalidParameterError,
    Progress,
    atomic_output,
    cache_dir,
    progress_enabled,
    write_json,
)
from openllm_hub_llama.checkpoint import (
    HFCheckpoint,
    MetaCheckpoint,
    dtype_name,
    permute_hf_to_meta,
    permute_meta_to_hf,
)
from openllm_hub_llama.tokenizer import require_tokenizer, write_hf_tokenizer_files

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: Largest safetensors shard meta -> hf writes (option ``max_shard_size``, bytes).
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3
#: Bump when the meta -> hf output changes, so cached conversions are redone.
CACHE_VERSION = "1"
HF_OUTTYPES = ("auto", "f32", "f16", "bf16")


def _target_dtype(outtype: str, source: torch.dtype) -> torch.dtype:
    import torch

    table = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
    if outtype == "auto":
        return source
    if outtype not in table:
        raise InvalidParameterError(f"unknown outtype {outtype!r}", where="outtype",
                                    fix=f"use one of: {', '.join(HF_OUTTYPES)}")
    return table[outtype]


def _torch_dtype_str(dt: torch.dtype) -> str:
    return str(dt).removeprefix("torch.")


def write_hf_from_meta(src: Path, dst: Path, outtype: str = "auto", *, progress: bool = False,
                       options: Mapping[str, Any] | None = None) -> None:
    """Write the HuggingFace form of the Meta checkpoint ``src`` into the (existing) folder ``dst``.

    Options: ``max_shard_size`` (bytes per safetensors shard), ``context_length`` (config's
    max_position_embeddings; default 2048 for LLaMA-1, 4096 for Llama-2, told apart by norm_eps).
    """
    opts = dict(options or {})
    tokenizer = require_tokenizer(src)
    ck = MetaCheckpoint(src)
    ck.with_context(opts.get("context_length"))
    hp = ck.hparams
    _check_tokenizer_rows(src, hp.vocab_size)
    target = _target_dtype(outtype, ck.source_dtype)
    tname = dtype_name(target)
    assert tname is not None
    max_shard = int(opts.get("max_shard_size", DEFAULT_MAX_SHARD_BYTES))

    # plan the shards: consecutive tensors, each shard at most max_shard bytes (at least one tensor)
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    item = target.itemsize
    for t in ck.tensors:
        n = item
        for d in t.shape:
            n *= d
        if shards[-1] and size + n > max_shard:
            shards.append([])
            size = 0
        shards[-1].append((t.hf, t.shape))
        size += n
    by_hf = {t.hf: t for t in ck.tensors}
    total = len(shards)
    weight_map: dict[str, str] = {}
    total_size = 0
    with Progress(total=len(ck.tensors), desc="meta -> hf", unit="tensor", enabled=progress) as bar:
        for i, shard in enumerate(shards):
            fname = shard_file_name("safetensors", i, total)
            w = SafetensorsWriter(dst / fname, [(name, tname, shape) for name, shape in shard])
            try:
                for name, _ in shard:
                    t = by_hf[name]
                    data = ck.merged(t)
                    if t.qk_heads is not None:
                        data = permute_meta_to_hf(data, t.qk_heads)
                    data = data.to(target)
                    w.write(name, data)
                    total_size += data.numel() * item
                    weight_map[name] = fname
                    del data
                    bar.update()
            finally:
                w.close()
    if total > 1:
        write_index(dst, "safetensors", weight_map, total_size)
    write_json(dst / "config.json", hp.hf_config(_torch_dtype_str(target)))
    write_json(dst / "generation_config.json", {"_from_model_config": True, "bos_token_id": hp.bos_token_id,
                                                "eos_token_id": hp.eos_token_id})
    write_hf_tokenizer_files(dst, tokenizer)
    _copy_added_tokens(src, dst)


def _copy_added_tokens(src: Path, dst: Path) -> None:
    if (src / "added_tokens.json").is_file():
        shutil.copyfile(src / "added_tokens.json", dst / "added_tokens.json")


def _check_tokenizer_rows(folder: Path, rows: int) -> None:
    """The tokenizer must account for exactly the embedding's rows (added tokens included)."""
    from openllm_hub_llama.tokenizer import load_vocab

    load_vocab(folder, rows)


def convert_meta_to_hf(req: ConvertRequest) -> None:
    """Converter entry point: Meta shards ``req.src`` -> HuggingFace folder ``req.dst`` (exists, empty)."""
    write_hf_from_meta(req.src, req.dst, req.outtype or "auto", progress=req.progress, options=req.options)


#: Model-parallel shard count of Meta's own checkpoints, by hidden size (7B, 13B, 30B, 65B/70B).
META_SHARDS = {4096: 1, 5120: 2, 6656: 4, 8192: 8}


def convert_hf_to_meta(req: ConvertRequest) -> None:
    """Converter entry point: HuggingFace folder -> Meta layout in ``req.dst`` (exists, empty).

    Option ``shards``: number of model-parallel ``consolidated.NN.pth`` files; by default the
    count Meta ships for the model's size (:data:`META_SHARDS`: 7B 1, 13B 2, 30B 4, 65B/70B 8),
    else 1. Tensors keep their dtype (``auto``). One shard is held in memory at a time.
    """
    import torch

    if (req.outtype or "auto") != "auto":
        raise InvalidParameterError(f"hf -> meta keeps the source dtype; outtype {req.outtype!r} is not offered",
                                    where="outtype", fix="use outtype 'auto'")
    tokenizer = require_tokenizer(req.src)
    ck = HFCheckpoint(req.src)
    hp = ck.hparams
    raw = req.options.get("shards", META_SHARDS.get(hp.hidden_size, 1))
    try:
        n = int(raw)
    except (TypeError, ValueError):
        raise InvalidParameterError(f"shards must be an integer, got {raw!r}", where="options.shards",
                                    fix="e.g. -o shards=2") from None
    if n < 1:
        raise InvalidParameterError("shards must be >= 1", where="options.shards", fix="e.g. -o shards=2")
    _check_tokenizer_rows(req.src, hp.vocab_size)
    tensors = list(ck.tensors)
    if hp.tie_word_embeddings:  # Meta checkpoints always carry output.weight
        from dataclasses import replace

        emb = tensors[0]
        tensors.append(replace(emb, hf=emb.hf, meta="output.weight", gguf="output.weight", meta_split=0))
    with Progress(total=n * len(tensors), desc="hf -> meta", unit="tensor", enabled=req.progress) as bar:
        for i in range(n):
            shard: dict[str, torch.Tensor] = {}
            for t in tensors:
                data = ck.read(t.hf)
                if t.qk_heads is not None:
                    data = permute_hf_to_meta(data, t.qk_heads)
                if t.meta_split is None:
                    shard[t.meta] = data.clone()
                else:
                    if data.shape[t.meta_split] < n:
                        raise InvalidParameterError(f"cannot split {t.hf} into {n} shards", where="options.shards")
                    shard[t.meta] = torch.tensor_split(data, n, dim=t.meta_split)[i].clone()
                bar.update()
            torch.save(shard, req.dst / f"consolidated.{i:02d}.pth")
            del shard
    ck.release()
    (req.dst / "params.json").write_text(json.dumps(hp.meta_params()) + "\n", encoding="utf-8")
    shutil.copyfile(tokenizer, req.dst / "tokenizer.model")
    _copy_added_tokens(req.src, req.dst)


# ---- cached meta -> hf --------------------------------------------------------------------------
def _fingerprint(path: Path) -> str:
    """Hash of the checkpoint's file names, sizes and modification times (cheap, no data read)."""
    h = hashlib.sha256(CACHE_VERSION.encode())
    for p in sorted(path.iterdir()):
        if p.is_file() and (p.name in ("params.json", "tokenizer.model") or p.name.startswith("consolidated.")):
            st = p.stat()
            h.update(f"{p.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    h.update(str(path.resolve()).encode())
    return h.hexdigest()[:24]


def meta_to_hf_cached(path: str | Path) -> Path:
    """The HuggingFace form of a Meta checkpoint, converted once into the cache and reused.

    The cache entry is keyed by the shards' names, sizes and mtimes and appears atomically
    (temporary folder renamed into place), so a killed conversion never leaves a broken entry.
    """
    src = Path(path)
    dest = cache_dir() / "meta-hf" / _fingerprint(src)
    if (dest / "config.json").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_output(dest, is_dir=True) as tmp:
            write_hf_from_meta(src, tmp, "auto", progress=progress_enabled())
    except OSError:
        # another process finished the same conversion first
        with contextlib.suppress(OSError):
            if (dest / "config.json").is_file():
                return dest
        raise
    return dest
