"""Tensor parallelism over torch.distributed: the group, and parallel linear/embedding layers.

Megatron/SwissArmyTransformer style: a column-parallel linear keeps a slice of the output
features (no communication), a row-parallel linear a slice of the input features (its partial
products are all-reduced, then the replicated bias added), and the vocab-parallel embedding a
slice of the vocabulary rows (ids outside the slice look up zeros; the sum over ranks is the
embedding). The same embedding slice gives the output logits, all-gathered along the
vocabulary. NCCL on GPUs, gloo on CPU; with one rank every collective is a no-op.

Weights are held by :class:`WeightStore`: floating point or INT8/INT4 (dequantized on the fly
to the compute dtype) and either resident on the compute device or offloaded, i.e. kept in
CPU memory (pinned for CUDA) and copied to the device for each use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from openllm_hub.engines.torch_quant import dequantize


@dataclass
class TPGroup:
    """This rank's place in the tensor-parallel group."""

    rank: int = 0
    world: int = 1
    group: Any = None

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(t, group=self.group)
        return t

    def all_gather_last(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's ``t`` along the last dimension (rank order)."""
        if self.world == 1:
            return t
        import torch.distributed as dist

        t = t.contiguous()
        parts = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(parts, t, group=self.group)
        return torch.cat(parts, dim=-1)


class WeightStore:
    """One weight matrix: fp or quantized, resident or offloaded; :meth:`get` yields it ready to use."""

    def __init__(self, weight: torch.Tensor, *, scale: torch.Tensor | None = None, bits: int | None = None,
                 device: torch.device, dtype: torch.dtype, offload: bool = False) -> None:
        self.device, self.dtype, self.bits, self.offload = device, dtype, bits, offload
        home = torch.device("cpu") if offload else device
        pin = offload and device.type == "cuda"
        if bits is None:
            data = weight.to(device=home, dtype=dtype)
        else:
            if scale is None:
                raise ValueError("a quantized weight needs its scales")
            data = weight.to(home)
            self.scale = scale.to(home)
            if pin:
                self.scale = self.scale.pin_memory()
        self.data = data.pin_memory() if pin else data

    @property
    def nbytes(self) -> int:
        extra = self.scale.numel() * self.scale.element_size() if self.bits is not None else 0
        return self.data.numel() * self.data.element_size() + extra

    def get(self) -> torch.Tensor:
        data = self.data
        scale = self.scale if self.bits is not None else None
        if self.offload:
            # copy=True: on a CPU-only run this still exercises the transfer (a fresh tensor each step)
            data = data.to(self.device, non_blocking=True, copy=True)
            if scale is not None:
                scale = scale.to(self.device, non_blocking=True, copy=True)
        if self.bits is None:
            return data
        assert scale is not None
        return dequantize(data, scale, self.bits, self.dtype)


class ColumnParallelLinear:
    """``y_local = x W_local^T + b_local``: this rank's slice of the output features."""

    def __init__(self, weight: WeightStore, bias: torch.Tensor) -> None:
        self.weight, self.bias = weight, bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.get(), self.bias)


class RowParallelLinear:
    """``y = all_reduce(x_local W_local^T) + b``: input features split, bias replicated."""

    def __init__(self, weight: WeightStore, bias: torch.Tensor, tp: TPGroup) -> None:
        self.weight, self.bias, self.tp = weight, bias, tp

    def __call__(self, x_local: torch.Tensor) -> torch.Tensor:
        partial = F.linear(x_local, self.weight.get())
        return self.tp.all_reduce(partial) + self.bias


class VocabParallelEmbedding:
    """Rows ``[start, start + n)`` of the vocabulary; also the (tied) output layer."""

    def __init__(self, weight: torch.Tensor, tp: TPGroup) -> None:
        self.weight, self.tp = weight, tp
        self.start = tp.rank * weight.shape[0]
        self.end = self.start + weight.shape[0]

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        outside = (ids < self.start) | (ids >= self.end)
        local = (ids - self.start).masked_fill(outside, 0)
        out = F.embedding(local, self.weight)
        out = out.masked_fill(outside.unsqueeze(-1), 0.0)
        return self.tp.all_reduce(out)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary logits: local slice, then all-gathered across ranks."""
        return self.tp.all_gather_last(F.linear(hidden, self.weight))
