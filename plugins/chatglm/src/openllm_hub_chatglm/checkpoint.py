"""Reading HuggingFace-layout ChatGLM checkpoint folders without running code from them.

The folder layout (``model.safetensors`` / ``pytorch_model.bin`` or their shards with an
index), the checks of every shard against the index and the lazy reading are shared with the
other families in :mod:`openllm_hub.engines.hf_folder`; this module keeps the names the
ChatGLM engine, quantizer and converter use.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from openllm_hub.engines.hf_folder import BIN_INDEX, SAFE_INDEX, HFFolder, WeightFiles

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["BIN_INDEX", "SAFE_INDEX", "WeightFiles", "find_layout", "iter_tensors", "stored_tensors",
           "tensor_shapes"]


def find_layout(folder: Path) -> WeightFiles:
    """Which weight files to read, validated against their index (safetensors headers included)."""
    return HFFolder(folder).weights


def iter_tensors(folder: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) shard by shard; tensors stay in their stored dtype."""
    yield from HFFolder(folder).iter_tensors()


def tensor_shapes(folder: Path) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor, in the order :func:`iter_tensors` yields them, without
    reading safetensors data (``.bin`` shards are memory-mapped)."""
    return HFFolder(folder).tensor_shapes()


def stored_tensors(folder: Path) -> list[tuple[str, tuple[int, ...], Path]] | None:
    """(name, shape, file) of every stored tensor, for checking a checkpoint before loading it:
    only the safetensors headers are read (``.bin`` shards are memory-mapped, their pickled
    index unpickled, no tensor data read), after the checks of every shard against the index.

    None for ``.bin`` shards in torch's legacy (pre-zip) format: their names cannot be read
    without reading all their data, so such a checkpoint is checked while it loads."""
    import zipfile

    weights = HFFolder(folder)
    if weights.kind == "bin" and not all(zipfile.is_zipfile(file) for file in weights.files):
        return None
    files = weights.tensor_files()
    shapes = weights.tensor_shapes()
    weights.release()
    return [(name, shape, files[name]) for name, shape in shapes]
