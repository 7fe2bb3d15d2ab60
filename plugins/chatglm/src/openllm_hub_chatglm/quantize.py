"""Writing ChatGLM checkpoints: INT8/INT4 quantization to disk in the official layout.

The output folder is what THUDM published as ``chatglm*-6b-int4`` / ``-int8``: config.json
with ``quantization_bit``, the four linears of every layer stored as an int8 ``weight``
(two INT4 values per byte) plus a float16 ``weight_scale``, everything else as it was.
Weights are written as sharded safetensors with an index; every other file of the source
folder (tokenizer, configs) is copied. The caller (core ``quantize``) gives a temporary
folder that is renamed into place only when this finished.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from openllm_hub.plugin import ConversionError, read_json, track, write_json
from openllm_hub_chatglm.checkpoint import BIN_INDEX, SAFE_INDEX, find_layout, iter_tensors

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from openllm_hub.plugin import QuantizeRequest

LAYER_LINEAR = re.compile(
    r"^transformer\.(?:encoder\.)?layers\.\d+\."
    r"(?:self_attention|attention|mlp)\.(?:query_key_value|dense|dense_h_to_4h|dense_4h_to_h)\.weight$")
SHARD_BYTES = 2 * 1024**3
_WEIGHT_FILE = re.compile(r"(\.safetensors|\.bin)$")


def write_safetensors_shards(folder: Path, tensors: Iterable[tuple[str, torch.Tensor]],
                             max_bytes: int = SHARD_BYTES, prefix: str = "model") -> list[Path]:
    """Write ``tensors`` into ``prefix-000NN-of-000MM.safetensors`` shards plus their index
    (a single ``prefix.safetensors`` when one shard suffices)."""
    from safetensors.torch import save_file

    parts: list[tuple[Path, list[str], int]] = []
    current: dict[str, torch.Tensor] = {}
    size = total = 0

    def flush() -> None:
        nonlocal current, size
        if not current:
            return
        tmp = folder / f".part-{len(parts):05d}.safetensors"
        save_file(current, str(tmp), metadata={"format": "pt"})
        parts.append((tmp, list(current), size))
        current, size = {}, 0

    for name, tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if current and size + nbytes > max_bytes:
            flush()
        current[name] = tensor.contiguous()
        size += nbytes
        total += nbytes
    flush()
    if not parts:
        raise ConversionError("no tensors to write", where=folder)
    if len(parts) == 1:
        final = folder / f"{prefix}.safetensors"
        parts[0][0].rename(final)
        return [final]
    weight_map: dict[str, str] = {}
    out = []
    for i, (tmp, names, _) in enumerate(parts):
        final = folder / f"{prefix}-{i + 1:05d}-of-{len(parts):05d}.safetensors"
        tmp.rename(final)
        out.append(final)
        weight_map.update(dict.fromkeys(names, final.name))
    write_json(folder / SAFE_INDEX, {"metadata": {"total_size": total}, "weight_map": weight_map})
    return out


def quantize_checkpoint(req: QuantizeRequest) -> None:
    """Quantize the ChatGLM folder ``req.src`` to ``req.scheme`` (int8/int4) into ``req.dst``."""
    from openllm_hub.engines.torch_quant import quantize_rows
    from openllm_hub_chatglm.spec import read_spec

    bits = {"int8": 8, "int4": 4}[req.scheme]
    src, dst = Path(req.src), Path(req.dst)
    cfg = read_json(src / "config.json")
    spec = read_spec(src, cfg)
    if spec.quantization_bit:
        raise ConversionError(f"the source is already INT{spec.quantization_bit}", where=src,
                              fix="quantize the float16/float32 checkpoint")
    layout = find_layout(src)
    weight_files = {p.name for p in layout.shards} | {SAFE_INDEX, BIN_INDEX}
    dst.mkdir(exist_ok=True)
    for item in sorted(src.iterdir()):
        if item.name in weight_files or item.name == "config.json" or _WEIGHT_FILE.search(item.name):
            continue
        if item.is_file():
            shutil.copy2(item, dst / item.name)

    def converted() -> Iterable[tuple[str, torch.Tensor]]:
        for name, tensor in iter_tensors(src):
            if LAYER_LINEAR.match(name):
                q, scale = quantize_rows(tensor, bits)
                yield name, q
                yield name[: -len("weight")] + "weight_scale", scale
            else:
                yield name, tensor

    write_safetensors_shards(dst, track(converted(), desc=f"quantizing to {req.scheme}", enabled=req.progress))
    write_json(dst / "config.json", {**cfg, "quantization_bit": bits})
