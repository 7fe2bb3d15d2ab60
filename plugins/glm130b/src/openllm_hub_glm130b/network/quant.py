"""INT8/INT4 weight-only quantization of GLM-130B's linear layers, as its checkpoints store it.

Per output row: ``scale = max|w| / (2**(bits-1) - 1)`` (fp16), ``q = round(w / scale)`` as int8.
INT4 packs two values per byte, the first in the high nibble and the second in the low one
(GLM-130B's ``int4WeightCompression`` kernel), so a ``(n, m)`` weight is stored as ``(n, m/2)``
int8. Execution dequantizes on the fly to the compute dtype (``q * scale``), CPU or CUDA.

That format is the shared one of :mod:`openllm_hub.engines.torch_quant` (the maths, packing
and dequantization live there); this module keeps what is GLM-130B's own: the option names,
which linears of a SAT state dict are quantized, and their ``<key>_scale`` naming. It imports
no torch at module level (the plugin's registration reads :func:`parse_bits`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from openllm_hub.plugin import InvalidParameterError
from openllm_hub_glm130b.partition import QUANTIZED_LINEARS, split_key

if TYPE_CHECKING:  # pragma: no cover
    import torch

BITS = {"int8": 8, "int4": 4}


def parse_bits(value: str | int | None) -> int | None:
    if value is None or value in ("none", "fp16", ""):
        return None
    if isinstance(value, int) and value in (4, 8):
        return value
    if isinstance(value, str) and value.lower() in BITS:
        return BITS[value.lower()]
    raise InvalidParameterError(f"unknown quantization {value!r}", where="quantize", fix="use int8 or int4")


def quantize(weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, scale)`` of a 2-D weight: int8 (INT4 packed two per byte) and fp16 per-row scales.

    Raises :class:`InvalidParameterError` when INT4 meets an odd row length (the option
    ``quantize='int4'`` does not suit this model).
    """
    from openllm_hub.engines.torch_quant import quantize_rows

    if bits == 4 and weight.shape[-1] % 2:
        raise InvalidParameterError(f"INT4 needs an even row length, got {weight.shape[-1]}", where="quantize")
    return quantize_rows(weight, bits)


def is_quantized_linear(key: str) -> bool:
    layer, name = split_key(key)
    return layer is not None and name.endswith(".weight") and name[: -len(".weight")] in QUANTIZED_LINEARS


def quantize_state(state: dict[str, torch.Tensor], bits: int) -> dict[str, torch.Tensor]:
    """One shard's state with its four linear weights per layer quantized (``<key>_scale`` added)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if is_quantized_linear(key):
            out[key], out[key + "_scale"] = quantize(value, bits)
        else:
            out[key] = value
    return out
