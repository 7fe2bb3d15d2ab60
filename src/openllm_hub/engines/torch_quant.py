"""Weight-only INT8/INT4 quantization for torch models: the maths, the packing and the layers.

One format serves every family that stores weight-only INT8/INT4 linears with one scale per
output row (ChatGLM's official ``quantization_bit`` checkpoints and GLM-130B's INT8/INT4 SAT
shards; the two were checked to agree on every detail below):

* scale: ``scale = max|w_row| / qmax`` with ``qmax = 2**(bits-1) - 1`` (127 or 7), computed in
  float32 and stored in ``scale_dtype`` (float16 in both families' checkpoints);
* values: ``q = round(w / scale)`` against the *stored* (rounded) scale, round half to even
  (``torch.round``), clamped to ``[-qmax, qmax]`` (so INT4 never uses -8), int8; a row whose
  scale is 0 (all zeros) is divided by 1 instead and stays 0;
* INT4 packing: two values per byte, the even column in the high nibble and the odd column
  in the low nibble, ``byte = (q[2j] << 4) | (q[2j+1] & 0xF)`` (ChatGLM's
  ``compress_int4_weight`` and GLM-130B's ``int4WeightCompression`` kernels), stored as int8
  of shape ``(rows, cols / 2)``; nibbles are read back sign-extended;
* dequantization: ``q`` converted to the compute dtype (exact) times the scale converted to
  it: one rounding, so every family reads its checkpoints bit-exactly.

Rows whose maximum is not finite (NaN/inf weights) have no meaningful quantization; their
values are unspecified (the stored scale is NaN/inf, so they dequantize to NaN/inf anyway).

This module imports torch when it is imported (its layers subclass ``torch.nn.Module``):
only engine code that already runs torch imports it, never ``import openllm_hub`` or a
plugin's registration.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from openllm_hub.errors import ConversionError, CorruptFileError

#: the supported bit widths
BITS = (4, 8)
#: torch's CPU int8 weight x float activation kernel (private API, present in torch 2.x)
_INT8_MM = hasattr(torch, "_weight_int8pack_mm")
#: torch's CPU int4 kernel (bfloat16 activations; its own packing, groups of 32..256 columns)
_INT4_MM = hasattr(torch, "_weight_int4pack_mm_for_cpu") and hasattr(torch, "_convert_weight_to_int4pack_for_cpu")
_INT4_GROUPS = (256, 128, 64, 32)
#: Rows dequantized at once in a matrix product (bounds the temporary float weight).
BLOCK_ELEMENTS = 1 << 22


def qmax(bits: int) -> int:
    """The largest stored magnitude at ``bits`` bits: 127 (INT8) or 7 (INT4)."""
    return (1 << (bits - 1)) - 1


def quantize_rows(weight: torch.Tensor, bits: int, scale_dtype: torch.dtype = torch.float16
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize a 2-D float weight ``(rows, cols)``; returns ``(q, scale)``.

    ``q`` is int8 ``(rows, cols)`` for INT8 and ``(rows, cols / 2)`` packed by
    :func:`pack_int4` for INT4; ``scale`` has shape ``(rows,)`` in ``scale_dtype``. The
    scale is rounded to ``scale_dtype`` first and the weight divided by that rounded scale,
    so dequantizing with the stored scale is exactly what was quantized.

    Error bound: every dequantized value is within half a step (``scale / 2``, plus the
    float32 rounding of ``w / scale``, below ``qmax * 2**-24`` steps) of the original when
    the scale is a normal float16 number (row max >= ``6.1e-5 * qmax``): rounding the scale
    to float16 changes it by at most 2**-11 relative, so ``|w| / scale <= qmax * (1 + 2**-10)
    < qmax + 0.5`` and the clamp never binds. Rows with smaller maxima get subnormal scales
    (coarser: the bound can fail) or a zero scale (the row quantizes to 0); a coarser
    ``scale_dtype`` (bfloat16) can let the clamp bind on a row's largest value.

    Raises :class:`ConversionError` for another bit width, a tensor that is not 2-D, or an
    odd number of columns under INT4.
    """
    if bits not in BITS:
        raise ConversionError(f"unsupported bit width {bits}", where="quantize", fix="use 4 or 8")
    if weight.ndim != 2:
        raise ConversionError(f"can only quantize 2-D weights, got shape {tuple(weight.shape)}", where="quantize")
    if bits == 4 and weight.shape[1] % 2:
        raise ConversionError(f"INT4 packs two values per byte: the input dimension {weight.shape[1]} is odd",
                              where="quantize", fix="use int8 for this model")
    w = weight.detach().float()
    top = qmax(bits)
    scale = (w.abs().amax(dim=1) / top).to(scale_dtype)
    s = scale.float()
    safe = torch.where(s > 0, s, torch.ones_like(s))
    q = torch.round(w / safe[:, None]).clamp_(-top, top).to(torch.int8)
    return (pack_int4(q) if bits == 4 else q), scale


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Pack int8 values in [-8, 7] two per byte along the last dimension: even column in the
    high nibble, odd column in the low one. ``(..., 2n)`` int8 -> ``(..., n)`` int8."""
    if q.shape[-1] % 2:
        raise ConversionError(f"INT4 packing needs an even number of columns, got {q.shape[-1]}", where="pack_int4")
    hi = q[..., 0::2].to(torch.int16)
    lo = q[..., 1::2].to(torch.int16)
    packed = ((hi & 0xF) << 4) | (lo & 0xF)
    return packed.to(torch.uint8).view(torch.int8)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: ``(..., n)`` int8 -> ``(..., 2n)`` int8 in [-8, 7],
    each nibble sign-extended."""
    hi = packed >> 4  # arithmetic shift on int8 keeps the sign of the high nibble
    lo = (packed << 4) >> 4
    return torch.stack((hi, lo), dim=-1).flatten(-2)


def dequantize(q: torch.Tensor, scale: torch.Tensor, bits: int, dtype: torch.dtype) -> torch.Tensor:
    """The float weight ``q * scale`` in ``dtype`` on ``q``'s device.

    ``q``: ``(..., cols)`` int8, INT4 packed ``(..., cols / 2)``; ``scale``: ``q``'s leading
    shape (one per row). Works on a whole tensor, a block of rows or looked-up rows; one
    allocation, scaled in place.
    """
    if bits == 4:
        out = torch.empty((*q.shape[:-1], q.shape[-1] * 2), dtype=dtype, device=q.device)
        # int8 shifts are arithmetic: >> 4 gives the high nibble, << 4 then >> 4 the low one
        out[..., 0::2] = torch.bitwise_right_shift(q, 4)
        out[..., 1::2] = torch.bitwise_right_shift(torch.bitwise_left_shift(q, 4), 4)
    else:
        out = q.to(dtype)
    return out.mul_(scale.to(dtype)[..., None])


class QuantLinear(nn.Module):
    """A linear layer holding an INT8/INT4 weight; state dict keys ``weight`` (int8, INT4
    packed), ``weight_scale`` and ``bias``, as ChatGLM's official checkpoints name them.

    The matrix product dequantizes block by block in the activation dtype (at most
    :data:`BLOCK_ELEMENTS` float values at a time), or uses torch's CPU int8/int4 kernels
    where they apply.
    """

    weight: torch.Tensor
    weight_scale: torch.Tensor
    #: set by :meth:`use_cpu_int4_kernel`: the buffers then hold torch's CPU int4 layout
    cpu_group: int = 0

    def __init__(self, in_features: int, out_features: int, bits: int, *, bias: bool,
                 scale_dtype: torch.dtype = torch.float16, device: torch.device | str | None = None,
                 bias_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if bits not in BITS:
            raise ConversionError(f"unsupported bit width {bits}", where="QuantLinear")
        if bits == 4 and in_features % 2:
            raise CorruptFileError(f"an INT4 layer needs an even input dimension, got {in_features}",
                                   where="QuantLinear", fix="quantize this model to int8 instead")
        self.in_features, self.out_features, self.bits = in_features, out_features, bits
        cols = in_features // 2 if bits == 4 else in_features
        self.register_buffer("weight", torch.zeros(out_features, cols, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.zeros(out_features, dtype=scale_dtype, device=device))
        self.bias: nn.Parameter | None = (
            nn.Parameter(torch.zeros(out_features, dtype=bias_dtype, device=device), requires_grad=False)
            if bias else None)

    def set_quantized(self, weight: torch.Tensor, scale: torch.Tensor) -> None:
        """Install an already quantized weight (e.g. from an official INT4/INT8 checkpoint)."""
        want = tuple(self.weight.shape)
        if tuple(weight.shape) != want or weight.dtype != torch.int8:
            raise CorruptFileError(
                f"quantized weight has shape {tuple(weight.shape)} {weight.dtype}, expected {want} int8 for "
                f"INT{self.bits} with input dimension {self.in_features}", where="QuantLinear",
                fix="the checkpoint's quantization_bit or shapes do not match its config")
        if tuple(scale.shape) != (self.out_features,):
            raise CorruptFileError(f"weight_scale has shape {tuple(scale.shape)}, expected ({self.out_features},)",
                                   where="QuantLinear")
        self.weight = weight.to(self.weight.device)
        self.weight_scale = scale.to(self.weight.device)

    def set_float(self, weight: torch.Tensor) -> None:
        """Quantize a float weight into this layer."""
        if tuple(weight.shape) != (self.out_features, self.in_features):
            raise CorruptFileError(f"weight has shape {tuple(weight.shape)}, expected "
                                   f"{(self.out_features, self.in_features)}", where="QuantLinear")
        q, s = quantize_rows(weight, self.bits, self.weight_scale.dtype)
        self.set_quantized(q, s)

    def use_cpu_int4_kernel(self) -> bool:
        """Repack an INT4 layer on the CPU for torch's int4 kernel (bfloat16 activations).

        The packed weight keeps 4 bits per value; the per-row scale is stored once per group
        of columns as bfloat16 (torch's ``qScaleAndZeros`` with zero offsets). Afterwards
        the buffers are no longer the official layout. Returns False (and changes nothing)
        when the kernel or the shapes do not allow it.
        """
        if self.bits != 4 or self.cpu_group or not _INT4_MM or self.weight.device.type != "cpu":
            return False
        group = next((g for g in _INT4_GROUPS if self.in_features % g == 0), 0)
        if not group or self.out_features % 16:
            return False
        unsigned = unpack_int4(self.weight).to(torch.int32) + 8  # torch's kernel: w = (u - 8) * scale + zero
        packed = torch._convert_weight_to_int4pack_for_cpu(unsigned, 1)
        scale_zero = torch.zeros(self.in_features // group, self.out_features, 2, dtype=torch.bfloat16)
        scale_zero[..., 0] = self.weight_scale.to(torch.bfloat16)
        self.weight, self.weight_scale, self.cpu_group = packed, scale_zero, group
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cpu_group:
            flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
            y = torch._weight_int4pack_mm_for_cpu(flat, self.weight, self.cpu_group, self.weight_scale)
            y = y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)
            b = self._bias(x)
            return y if b is None else y + b
        if self.bits == 8 and x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and _INT8_MM:
            # torch's CPU kernel multiplies by the int8 weight directly (no float copy)
            flat = x.reshape(-1, self.in_features)
            y = torch._weight_int8pack_mm(flat, self.weight, self.weight_scale.to(x.dtype))
            y = y.reshape(*x.shape[:-1], self.out_features)
            b = self._bias(x)
            return y if b is None else y + b
        rows = max(1, BLOCK_ELEMENTS // max(1, self.in_features))
        if rows >= self.out_features:
            return F.linear(x, dequantize(self.weight, self.weight_scale, self.bits, x.dtype), self._bias(x))
        outs = []
        for start in range(0, self.out_features, rows):
            w = dequantize(self.weight[start:start + rows], self.weight_scale[start:start + rows], self.bits, x.dtype)
            outs.append(F.linear(x, w))
        y = torch.cat(outs, dim=-1)
        b = self._bias(x)
        return y if b is None else y + b

    def _bias(self, x: torch.Tensor) -> torch.Tensor | None:
        return None if self.bias is None else self.bias.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, int{self.bits}, bias={self.bias is not None}"


class QuantEmbedding(nn.Module):
    """An embedding table with one INT8/INT4 row per token (dequantized per lookup).

    The table is held by ``inner`` (a :class:`QuantLinear` of ``dim`` inputs and ``num``
    outputs: the same row layout), so a tied output layer can share it.
    """

    def __init__(self, num: int, dim: int, bits: int, *, scale_dtype: torch.dtype = torch.float16,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        self.inner = QuantLinear(dim, num, bits, bias=False, scale_dtype=scale_dtype, device=device)
        self.num_embeddings, self.embedding_dim, self.bits = num, dim, bits

    def forward(self, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Rows of ``ids`` (any shape) as ``(*ids.shape, dim)`` in ``dtype``."""
        return dequantize(self.inner.weight[ids], self.inner.weight_scale[ids], self.bits, dtype)


def resident_bytes(module: nn.Module) -> int:
    """Bytes held by a module's parameters and buffers (what a quantized load saves);
    tensors shared between modules count once."""
    seen: set[int] = set()
    total = 0
    for t in [*module.parameters(), *module.buffers()]:
        if id(t) in seen:
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    return total
