"""Reading HuggingFace-layout checkpoint folders without running code from them.

A folder holds ``model.safetensors`` or ``pytorch_model.bin``, or shards named
``*-000NN-of-000MM.*`` listed in ``model.safetensors.index.json`` /
``pytorch_model.bin.index.json``. Safetensors are preferred when both exist. ``.bin`` files
go through :func:`openllm_hub.core.io.load_torch_checkpoint` (``weights_only``; a pickle that
needs code is refused). Every shard is checked against the index: a tensor the index places
in a shard must be there and nothing else may be.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from openllm_hub.core.io import load_torch_checkpoint, read_json, read_safetensors_header
from openllm_hub.errors import CorruptFileError, NotFoundError

if TYPE_CHECKING:  # pragma: no cover
    import torch

SAFE_INDEX, BIN_INDEX = "model.safetensors.index.json", "pytorch_model.bin.index.json"
SAFE_SINGLE, BIN_SINGLE = "model.safetensors", "pytorch_model.bin"


@dataclass(frozen=True)
class Layout:
    """The weight files of a folder: ``shards`` maps each file to the tensor names it must hold
    (None when there is no index to check against)."""

    kind: str  # "safetensors" | "bin"
    shards: dict[Path, frozenset[str] | None]


def find_layout(folder: Path) -> Layout:
    """Which weight files to read, validated against their index."""
    for index_name, kind in ((SAFE_INDEX, "safetensors"), (BIN_INDEX, "bin")):
        index = folder / index_name
        if index.is_file():
            return _indexed(folder, index, kind)
    for single, kind in ((SAFE_SINGLE, "safetensors"), (BIN_SINGLE, "bin")):
        if (folder / single).is_file():
            return Layout(kind, {folder / single: None})
    raise NotFoundError("no weights found (model.safetensors, pytorch_model.bin or a sharded index)", where=folder,
                        fix="download the checkpoint's weight files into this folder")


def _indexed(folder: Path, index: Path, kind: str) -> Layout:
    data = read_json(index)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CorruptFileError("the shard index has no weight_map", where=index, fix="restore the index file")
    shards: dict[Path, set[str]] = {}
    for name, file in weight_map.items():
        if not isinstance(file, str) or "/" in file or "\\" in file:
            raise CorruptFileError(f"the index names an invalid shard {file!r} for {name!r}", where=index)
        shards.setdefault(folder / file, set()).add(name)
    for shard in shards:
        if not shard.is_file():
            raise NotFoundError(f"shard {shard.name} listed in {index.name} is missing", where=shard,
                                fix="download every shard the index lists")
    if kind == "safetensors":
        for shard, names in shards.items():
            held = {k for k in read_safetensors_header(shard) if k != "__metadata__"}
            check_shard(shard, names, held, index.name)
    return Layout(kind, {p: frozenset(n) for p, n in sorted(shards.items())})


def check_shard(shard: Path, expected: set[str] | frozenset[str], held: set[str], index_name: str) -> None:
    """Raise when a shard's tensors differ from what the index says it holds."""
    if held == set(expected):
        return
    missing, extra = sorted(set(expected) - held), sorted(held - set(expected))
    parts = []
    if missing:
        parts.append(f"lacks {len(missing)} tensor(s) the index places there (e.g. {missing[:2]})")
    if extra:
        parts.append(f"holds {len(extra)} tensor(s) the index does not place there (e.g. {extra[:2]})")
    raise CorruptFileError(f"shard {shard.name} disagrees with {index_name}: " + "; ".join(parts), where=shard,
                           fix="re-download the shards and index from the same revision")


def iter_tensors(folder: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) shard by shard; tensors stay in their stored dtype."""
    layout = find_layout(folder)
    for shard, expected in layout.shards.items():
        if layout.kind == "safetensors":
            from safetensors import safe_open

            try:
                with safe_open(str(shard), framework="pt", device="cpu") as fh:
                    for name in fh.keys():
                        yield name, fh.get_tensor(name)
            except (OSError, ValueError, RuntimeError) as exc:
                raise CorruptFileError(f"cannot read safetensors shard: {exc}", where=shard,
                                       fix="download it again") from exc
        else:
            state = load_torch_checkpoint(shard)
            if expected is not None:
                check_shard(shard, expected, set(state), BIN_INDEX)
            for name, tensor in state.items():
                if not hasattr(tensor, "dtype"):
                    raise CorruptFileError(f"{name!r} is not a tensor", where=shard)
                yield name, tensor
            del state


def tensor_shapes(folder: Path) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor, in the order :func:`iter_tensors` yields them, without
    reading safetensors data (``.bin`` shards are memory-mapped)."""
    layout = find_layout(folder)
    out: list[tuple[str, tuple[int, ...]]] = []
    for shard in layout.shards:
        if layout.kind == "safetensors":
            from safetensors import safe_open

            with safe_open(str(shard), framework="pt", device="cpu") as fh:
                out.extend((name, tuple(fh.get_slice(name).get_shape())) for name in fh.keys())
        else:
            out.extend((name, tuple(t.shape)) for name, t in load_torch_checkpoint(shard).items())
    return out
