"""Refusing non-finite weights at load: a NaN or Inf in any tensor is reported by name.

A checkpoint with a NaN weight loads and runs, but every logit it touches becomes NaN and the
sampler fails late with "Probabilities contain NaN" (or llama.cpp prints nothing). Engines
check each tensor as they read it (:func:`check_finite`, or :func:`finite_tensors` around a
``(name, tensor)`` stream), which costs one pass over data that is being read anyway, and
raise :class:`~openllm_hub.errors.CorruptFileError` naming the tensor and the file.

Integer tensors (quantized weights) are skipped: they cannot hold NaN. torch is imported
inside the functions.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from openllm_hub.errors import CorruptFileError

if TYPE_CHECKING:  # pragma: no cover
    import torch

_FIX = "the weights are damaged (NaN/Inf, e.g. from a diverged training run or a bad conversion): " \
       "download or convert the checkpoint again"


def check_finite(name: str, tensor: torch.Tensor, where: str | Path) -> None:
    """Raise :class:`CorruptFileError` when floating-point ``tensor`` holds a NaN or an Inf."""
    import torch

    if not (tensor.is_floating_point() or tensor.is_complex()) or tensor.numel() == 0:
        return
    if tensor.device.type == "meta":
        return
    if not bool(torch.isfinite(tensor).all()):
        bad = "NaN" if bool(torch.isnan(tensor).any()) else "Inf"
        raise CorruptFileError(f"tensor {name!r} holds {bad} values", where=where, fix=_FIX)


def finite_tensors(tensors: Iterable[tuple[str, torch.Tensor]],
                   where: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Pass ``(name, tensor)`` pairs through, checking each with :func:`check_finite`."""
    for name, tensor in tensors:
        check_finite(name, tensor, where)
        yield name, tensor


__all__ = ["check_finite", "finite_tensors"]
