"""Strategy strings of the ``rwkv`` package: parse, validate, and derive them from a placement.

A strategy says where each layer lives and in which precision, e.g. ``cpu fp32``,
``cuda fp16``, ``cuda fp16i8`` (int8 weights), ``cuda fp16 *10 -> cpu fp32`` (10 layers on the
GPU, the rest on the CPU) or ``cuda fp16i8 *10+`` (10 layers kept on the GPU, the others
streamed from pinned CPU memory). The package checks strings with a regular expression that
also admits ``i4``/``i3`` suffixes it then silently ignores, and ``fp16`` on the CPU which
ChatRWKV documents as unsupported; :func:`parse_strategy` refuses those with a reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from openllm_hub.plugin import InvalidParameterError, Placement

_SEGMENT = re.compile(r"^(cpu|cuda(?::\d+)?|mps|dml) +(fp16|fp32|bf16)(i8|i4|i3)?(?: +\*(\d+)(\+)?)?$")
_HELP = "examples: 'cpu fp32', 'cpu bf16', 'cuda fp16', 'cuda:0 fp16i8', 'cuda fp16 *10 -> cpu fp32', 'cuda fp16i8 *8+'"


@dataclass(frozen=True)
class Segment:
    """One ``->``-separated part: device, activation dtype, int8 weights, layer count, streaming."""

    device: str
    dtype: str
    int8: bool = False
    layers: int | None = None
    stream: bool = False

    def __str__(self) -> str:
        text = f"{self.device} {self.dtype}{'i8' if self.int8 else ''}"
        if self.layers is not None:
            text += f" *{self.layers}{'+' if self.stream else ''}"
        return text


@dataclass(frozen=True)
class Strategy:
    segments: tuple[Segment, ...]

    def __str__(self) -> str:
        return " -> ".join(str(s) for s in self.segments)

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.device for s in self.segments))

    @property
    def uses_cuda(self) -> bool:
        return any(s.device.startswith("cuda") for s in self.segments)

    @property
    def int8(self) -> bool:
        return any(s.int8 for s in self.segments)

    @property
    def dtype(self) -> str:
        return "/".join(dict.fromkeys(s.dtype for s in self.segments))

    def device_label(self) -> str:
        """``cpu``, ``cuda:0`` or e.g. ``cuda:0+cpu`` for a split."""
        labels = ["cuda:0" if d == "cuda" else d for d in self.devices]
        return "+".join(dict.fromkeys(labels))


def parse_strategy(text: str, *, version: str | None = None) -> Strategy:
    """Parse and validate a strategy string; ``version`` adds RWKV-7's narrower rules."""
    where = f"strategy {text!r}"
    parts = [p.strip() for p in text.strip().split("->")]
    if not text.strip() or any(not p for p in parts):
        raise InvalidParameterError("the strategy string is empty or has an empty part", where=where, fix=_HELP)
    segments: list[Segment] = []
    for part in parts:
        m = _SEGMENT.match(part)
        if m is None:
            raise InvalidParameterError(f"cannot parse strategy part {part!r}: expected 'DEVICE DTYPE [*N[+]]' "
                                        "with DEVICE cpu|cuda|cuda:N and DTYPE fp16|fp32|bf16 (+i8)",
                                        where=where, fix=_HELP)
        device, dtype, quant, layers, plus = m.groups()
        if quant in ("i4", "i3"):
            raise InvalidParameterError(f"{dtype}{quant}: the rwkv package implements only i8 quantization "
                                        f"(it would silently run {dtype})", where=where, fix=f"use {dtype}i8")
        if device == "cpu" and dtype == "fp16":
            raise InvalidParameterError("fp16 does not run on the CPU in the rwkv package", where=where,
                                        fix="use 'cpu fp32' or 'cpu bf16'")
        if device == "dml":
            raise InvalidParameterError("DirectML (dml) needs torch_directml and RWKV_DML_ON at import; "
                                        "not supported by this plugin", where=where, fix="use cpu or cuda")
        if plus and not device.startswith("cuda"):
            raise InvalidParameterError("streaming layers ('*N+') only works from CPU memory to a CUDA GPU",
                                        where=where, fix="e.g. 'cuda fp16 *10+'")
        if layers is not None and int(layers) == 0:
            raise InvalidParameterError("a part with '*0' holds no layer", where=where, fix="drop that part")
        segments.append(Segment(device, dtype, quant == "i8", None if layers is None else int(layers), bool(plus)))
    if sum(s.stream for s in segments) > 1:
        raise InvalidParameterError("only one part may stream layers ('*N+')", where=where, fix=_HELP)
    if version == "7":
        seg = segments[0]
        if len(segments) > 1 or seg.int8 or seg.layers is not None:
            raise InvalidParameterError("RWKV-7 runs on one device in one precision (no splits, no i8, no *N)",
                                        where=where, fix="use e.g. 'cuda fp16', 'cpu fp32' or 'cpu bf16'")
    return Strategy(tuple(segments))


def strategy_from_placement(placement: Placement, *, n_layer: int, int8: bool = False,
                            stream: bool = False) -> Strategy:
    """The strategy for a core :class:`Placement`: all layers on one device, several GPUs
    sharing the layers evenly, or ``gpu_layers`` on the GPU and the rest on the CPU in fp32
    (streamed to the GPU instead with ``stream``)."""
    if placement.kind == "cpu":
        return Strategy((Segment("cpu", placement.dtype, int8),))
    ids = placement.gpu_ids or (0,)
    devices = [f"cuda:{i}" for i in ids] if len(ids) > 1 or ids[0] != 0 else ["cuda"]
    dtype = placement.dtype
    gl = placement.gpu_layers
    total = n_layer + 1  # the package counts the output head as one more "layer"
    if gl is None or gl == -1 or gl >= total:
        if stream:
            raise InvalidParameterError("stream=True needs gpu_layers: how many layers stay on the GPU",
                                        where="load options", fix="e.g. gpu_layers=10, stream=True")
        return Strategy(tuple(Segment(d, dtype, int8) for d in devices))
    if gl == 0:
        return Strategy((Segment("cpu", "fp32", int8),))
    if len(devices) > 1:
        raise InvalidParameterError("gpu_layers with several GPUs is ambiguous", where="device",
                                    fix="pass a raw strategy, e.g. "
                                        "strategy='cuda:0 fp16 *10 -> cuda:1 fp16 *10 -> cpu fp32'")
    if stream:
        return Strategy((Segment(devices[0], dtype, int8, gl, True),))
    return Strategy((Segment(devices[0], dtype, int8, gl), Segment("cpu", "fp32", int8)))
