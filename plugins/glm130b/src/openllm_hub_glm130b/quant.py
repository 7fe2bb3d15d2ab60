"""INT8/INT4 weight-only quantization of GLM-130B's linear layers, as its checkpoints store it.

Per output row: ``scale = max|w| / (2**(bits-1) - 1)`` (fp16), ``q = round(w / scale)`` as int8.
INT4 packs two values per byte, the first in the high nibble and the second in the low one
(GLM-130B's ``int4WeightCompression`` kernel), so a ``(n, m)`` weight is stored as ``(n, m/2)``
int8. Execution dequantizes on the fly to the compute dtype (``q * scale``), CPU or CUDA.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from openllm_hub.errors import InvalidParameterError
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
    """``(q, scale)`` of a 2-D weight: int8 (INT4 packed two per byte) and fp16 per-row scales."""
    import torch

    w = weight.float()
    top = 2 ** (bits - 1) - 1
    scale = (w.abs().amax(dim=-1) / top).half()
    s = scale.float()
    safe = torch.where(s > 0, s, torch.ones_like(s))
    q = torch.round(w / safe[:, None]).clamp_(-top, top).to(torch.int8)
    if bits == 4:
        q = pack_int4(q)
    return q, scale


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Two signed 4-bit values per byte: element 2j in the high nibble, 2j+1 in the low."""
    import torch

    if q.shape[-1] % 2:
        raise InvalidParameterError(f"INT4 needs an even row length, got {q.shape[-1]}", where="quantize")
    q16 = q.to(torch.int16)
    byte = ((q16[:, 0::2] & 0xF) << 4) | (q16[:, 1::2] & 0xF)
    return byte.to(torch.uint8).view(torch.int8)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: ``(n, m/2)`` int8 -> ``(n, m)`` int8 in [-8, 7]."""
    import torch

    b = packed.to(torch.int16)
    high = b >> 4  # arithmetic shift of the sign-extended byte
    low = ((b & 0xF) ^ 8) - 8  # sign-extend the low nibble
    return torch.stack((high, low), dim=-1).reshape(packed.shape[0], -1).to(torch.int8)


def dequantize(q: torch.Tensor, scale: torch.Tensor, bits: int, dtype: torch.dtype) -> torch.Tensor:
    """The ``(n, m)`` weight in ``dtype`` on ``q``'s device (one allocation, scaled in place)."""
    import torch

    if bits == 4:
        # int8 shifts are arithmetic: >> 4 gives the high nibble, << 4 then >> 4 the low one
        out = torch.empty((q.shape[0], q.shape[1] * 2), dtype=dtype, device=q.device)
        out[:, 0::2] = torch.bitwise_right_shift(q, 4)
        out[:, 1::2] = torch.bitwise_right_shift(torch.bitwise_left_shift(q, 4), 4)
    else:
        out = q.to(dtype)
    return out.mul_(scale.to(dtype)[:, None])


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
