"""HuggingFace checkpoint folders: finding, validating and lazily reading their weight files,
and writing them (one file, or shards with their index).

A folder holds ``model.safetensors`` or ``pytorch_model.bin``, or shards named
``*-000NN-of-000MM.*`` listed in ``model.safetensors.index.json`` /
``pytorch_model.bin.index.json``. Safetensors are preferred when both exist. ``.bin`` files go
through :func:`openllm_hub.core.io.load_torch_checkpoint` (``weights_only``, memory-mapped; a
pickle that needs code is refused), so nothing from a checkpoint ever runs.

Every family that reads HF folders (LLaMA, ChatGLM, ...) reads them here, so the validation
lives in one place, one function per check (the ``check_*`` functions below): the index's
``weight_map`` is well-formed, every shard it names is a plain file name inside the folder,
every such shard exists, and each shard holds exactly the tensors the index places in it.
A failed check raises an :class:`~openllm_hub.errors.OpenLLMHubError` naming the file (and
the tensor) and how to fix it. Each safetensors header is validated by
:func:`openllm_hub.core.io.read_safetensors_header` (offsets tiling the data exactly, dtypes,
shapes against byte sizes), so ``safetensors`` itself never sees a header it would reject.

torch and safetensors are imported inside the functions that need them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Any, Literal

from openllm_hub.core.io import load_torch_checkpoint, read_json, read_safetensors_header, read_text_file, write_json
from openllm_hub.errors import ConversionError, CorruptFileError, NotFoundError, OpenLLMHubError

if TYPE_CHECKING:  # pragma: no cover
    import torch

WeightKind = Literal["safetensors", "bin"]

SAFE_INDEX, BIN_INDEX = "model.safetensors.index.json", "pytorch_model.bin.index.json"
SAFE_SINGLE, BIN_SINGLE = "model.safetensors", "pytorch_model.bin"
#: (kind, single file, index file), in order of preference.
_LAYOUTS: tuple[tuple[WeightKind, str, str], ...] = (("safetensors", SAFE_SINGLE, SAFE_INDEX),
                                                      ("bin", BIN_SINGLE, BIN_INDEX))
#: item size of each safetensors dtype name.
SAFETENSORS_ITEMSIZE: dict[str, int] = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2,
                                        "I8": 1, "U8": 1, "BOOL": 1}


# ---- finding and validating the weight files -------------------------------------------------------
@dataclass(frozen=True)
class WeightFiles:
    """The weight files of a folder. ``shards`` maps each file, in file-name order, to the
    tensor names the index places in it (None when there is no index to check against)."""

    kind: WeightKind
    shards: dict[Path, frozenset[str] | None]
    index: Path | None = None

    @property
    def files(self) -> list[Path]:
        return list(self.shards)


def find_weights(folder: str | Path) -> WeightFiles:
    """Which weight files to read, with the index (when sharded) checked against the folder:
    a well-formed ``weight_map`` whose shards are files inside the folder that exist. Shard
    contents are checked by :class:`HFFolder` (safetensors headers) or when a shard is opened."""
    root = Path(folder)
    if not root.is_dir():
        raise NotFoundError("HuggingFace checkpoint folder not found", where=root,
                            fix="give the folder that holds config.json and the weight files")
    for kind, single, index_name in _LAYOUTS:
        index = root / index_name
        if index.is_file():
            return _from_index(root, index, kind)
        if (root / single).is_file():
            return WeightFiles(kind, {root / single: None})
    raise NotFoundError("no weights (model*.safetensors or pytorch_model*.bin) in the folder", where=root,
                        fix="download the checkpoint's weight files (and their index, when sharded) into this folder")


def _from_index(folder: Path, index: Path, kind: WeightKind) -> WeightFiles:
    weight_map = read_weight_map(index)
    shards: dict[Path, set[str]] = {}
    for name, file in weight_map.items():
        check_shard_name(index, name, file)
        shards.setdefault(folder / file, set()).add(name)
    for shard in shards:
        check_shard_exists(index, shard)
    return WeightFiles(kind, {p: frozenset(n) for p, n in sorted(shards.items())}, index)


def read_weight_map(index: Path) -> dict[str, str]:
    """The index's ``weight_map`` (tensor name -> shard file name), checked to be a non-empty
    object of strings."""
    data = read_json(index)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CorruptFileError("the shard index has no weight_map", where=index,
                               fix="restore the index file from the model's source")
    for name, file in weight_map.items():
        if not isinstance(file, str):
            raise CorruptFileError(f"the index names an invalid shard {file!r} for {name!r}", where=index,
                                   fix="restore the index file from the model's source")
    return weight_map


def check_shard_name(index: Path, tensor: str, file: str) -> None:
    """A shard named by the index must be a plain file name next to the index: no folder
    part, no ``..``, not absolute (so a crafted index cannot make us read outside the folder)."""
    plain = (file not in ("", ".", "..") and "\0" not in file and len(PurePosixPath(file).parts) == 1
             and len(PureWindowsPath(file).parts) == 1 and "/" not in file and "\\" not in file)
    if not plain:
        raise CorruptFileError(
            f"the index names an invalid shard {file!r} for {tensor!r}: shards must be files inside the folder",
            where=index, fix="restore the index file from the model's source (shard names have no folder part)")


def check_shard_exists(index: Path, shard: Path) -> None:
    """Every shard the index names must be a file in the folder."""
    if not shard.is_file():
        raise NotFoundError(f"shard {shard.name} listed in the index is missing", where=shard,
                            fix=f"download every shard that {index.name} lists")


def check_shard_contents(shard: Path, expected: Iterable[str], held: Iterable[str], index_name: str) -> None:
    """A shard must hold exactly the tensors the index places in it."""
    want, have = set(expected), set(held)
    if want == have:
        return
    missing, extra = sorted(want - have), sorted(have - want)
    parts = []
    if missing:
        parts.append(f"lacks {len(missing)} tensor(s) the index places there (e.g. {missing[:2]})")
    if extra:
        parts.append(f"holds {len(extra)} tensor(s) the index does not place there (e.g. {extra[:2]})")
    raise CorruptFileError(f"shard disagrees with the index ({shard.name} disagrees with {index_name}): "
                           + "; ".join(parts), where=shard,
                           fix="re-download the shards and index from the same revision")


# ---- lazy reading ---------------------------------------------------------------------------------------
def safetensors_names(shard: Path) -> list[str]:
    """The tensor names in a safetensors file's header, in header order (checks that their
    data lies inside the file)."""
    return [k for k in read_safetensors_header(shard) if k != "__metadata__"]


def read_chat_template(folder: str | Path, token_pieces: Mapping[str, str] | None = None) -> tuple[str | None,
                                                                                                  dict[str, str]]:
    """The folder's own Jinja chat template, as transformers finds it (``chat_template.jinja``,
    else ``chat_template`` in ``tokenizer_config.json``: a string, or a list of named ones, taking
    ``default``), and the special-token strings it sees: ``bos_token``, ``eos_token``,
    ``unk_token``, ``pad_token`` from ``tokenizer_config.json`` (a string or an added-token
    object), else from ``token_pieces`` (e.g. the sentencepiece model's BOS/EOS pieces, keyed
    ``"bos"``, ``"eos"``, ...). None for the template when the folder has none."""
    root = Path(folder)
    cfg_path = root / "tokenizer_config.json"
    loaded = read_json(cfg_path) if cfg_path.is_file() else None
    cfg: dict[str, Any] = loaded if isinstance(loaded, dict) else {}
    source: Any = cfg.get("chat_template")
    if isinstance(source, list):
        source = next((t.get("template") for t in source if isinstance(t, dict) and t.get("name") == "default"), None)
    if (root / "chat_template.jinja").is_file():
        source = read_text_file(root / "chat_template.jinja", what="chat_template.jinja")
    variables: dict[str, str] = {}
    for kind in ("bos", "eos", "unk", "pad"):
        value = cfg.get(f"{kind}_token")
        value = value.get("content") if isinstance(value, dict) else value
        if isinstance(value, str):
            variables[f"{kind}_token"] = value
        elif token_pieces and kind in token_pieces:
            variables[f"{kind}_token"] = token_pieces[kind]
    return (source if isinstance(source, str) else None), variables


class HFFolder:
    """The weight files of a HuggingFace folder, validated when opened and read lazily.

    Opening reads only the index and the safetensors headers (each checked against the
    index); ``.bin`` shards are memory-mapped when first read and checked then. One shard is
    held open at a time (:meth:`release` drops it).
    """

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder)
        self.weights = find_weights(self.path)
        self._held: tuple[Path, Mapping[str, torch.Tensor]] | None = None
        self._where: dict[str, Path] | None = None
        if self.kind == "safetensors":
            for shard in self.weights.files:
                self.check_shard(shard, safetensors_names(shard))

    @property
    def kind(self) -> WeightKind:
        return self.weights.kind

    @property
    def files(self) -> list[Path]:
        return self.weights.files

    def check_shard(self, shard: Path, held: Iterable[str]) -> None:
        """Check ``held`` (the names in ``shard``) against the index, when there is one."""
        expected = self.weights.shards[shard]
        if expected is not None and self.weights.index is not None:
            check_shard_contents(shard, expected, held, self.weights.index.name)

    def shard(self, shard: Path) -> Mapping[str, torch.Tensor]:
        """The tensors of one shard, opened lazily (safetensors: a ``safe_open`` handle reading
        on access; ``.bin``: the memory-mapped state dict, checked against the index)."""
        if self._held is not None and self._held[0] == shard:
            return self._held[1]
        self._held = None
        tensors: Mapping[str, torch.Tensor]
        if self.kind == "safetensors":
            tensors = _SafetensorsShard(shard)
        else:
            state = load_torch_checkpoint(shard, mmap=True)
            self.check_shard(shard, state)
            for name, value in state.items():
                if not hasattr(value, "dtype"):
                    raise CorruptFileError(f"{name!r} is not a tensor", where=shard,
                                           fix="this is not a weights-only state dict; convert it to safetensors")
            tensors = state
        self._held = (shard, tensors)
        return tensors

    def tensor_files(self) -> dict[str, Path]:
        """Which shard holds each tensor: the index's map (checked), or the single file's names."""
        if self._where is None:
            where: dict[str, Path] = {}
            for file, names in self.weights.shards.items():
                if names is None:
                    names = frozenset(safetensors_names(file) if self.kind == "safetensors" else self.shard(file))
                where.update(dict.fromkeys(sorted(names), file))
            self._where = where
        return self._where

    def tensor(self, name: str) -> torch.Tensor:
        """One tensor, in its stored dtype, from its (lazily opened) shard."""
        file = self.tensor_files().get(name)
        if file is None:
            raise NotFoundError(f"tensor {name!r} is not in the checkpoint", where=self.path,
                                fix="check that the folder holds the complete checkpoint")
        return self.shard(file)[name]

    def iter_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield (name, tensor) shard by shard; tensors stay in their stored dtype."""
        for file in self.files:
            tensors = self.shard(file)
            for name in list(tensors):
                yield name, tensors[name]
            self.release()

    def tensor_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        """(name, shape) of every tensor, in the order :meth:`iter_tensors` yields them, without
        reading safetensors data (``.bin`` shards are memory-mapped)."""
        out: list[tuple[str, tuple[int, ...]]] = []
        for file in self.files:
            if self.kind == "safetensors":
                header = read_safetensors_header(file)
                out.extend((k, tuple(int(d) for d in v["shape"])) for k, v in header.items() if k != "__metadata__")
            else:
                out.extend((name, tuple(t.shape)) for name, t in self.shard(file).items())
                self.release()
        return out

    def release(self) -> None:
        """Drop the shard held open for reading."""
        self._held = None


class _SafetensorsShard(Mapping[str, "torch.Tensor"]):
    """A safetensors file as a read-only mapping; the file is opened (memory-mapped by
    safetensors) on the first access and each tensor is read when asked for."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._names = safetensors_names(path)
        self._handle: Any = None

    def __getitem__(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        if name not in self._names:
            raise KeyError(name)
        try:
            if self._handle is None:
                self._handle = safe_open(str(self.path), framework="pt", device="cpu")
            tensor: torch.Tensor = self._handle.get_tensor(name)
            return tensor
        except Exception as exc:  # safetensors.SafetensorError, OSError, ...: never past this boundary
            raise CorruptFileError(f"cannot read tensor {name!r} from the safetensors shard: {exc}", where=self.path,
                                   fix="download the shard again") from exc

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


# ---- writing ---------------------------------------------------------------------------------------------
def shard_file_name(kind: WeightKind, i: int, n: int) -> str:
    """The file name of shard ``i`` (0-based) of ``n``, as transformers names them."""
    stem, ext = ("model", "safetensors") if kind == "safetensors" else ("pytorch_model", "bin")
    return f"{stem}.{ext}" if n == 1 else f"{stem}-{i + 1:05d}-of-{n:05d}.{ext}"


def write_index(folder: Path, kind: WeightKind, weight_map: Mapping[str, str], total_size: int) -> Path:
    """Write the shard index (``metadata.total_size`` in bytes and the ``weight_map``)."""
    index = folder / (SAFE_INDEX if kind == "safetensors" else BIN_INDEX)
    write_json(index, {"metadata": {"total_size": int(total_size)}, "weight_map": dict(weight_map)})
    return index


def write_hf_weights(folder: Path, groups: Sequence[Mapping[str, torch.Tensor]], *,
                     kind: WeightKind = "safetensors") -> list[Path]:
    """Write each group of tensors as one weight file in ``folder`` (with the index when
    there is more than one); return the files. How tensors are grouped is the caller's."""
    import torch
    from safetensors.torch import save_file

    if not groups or not all(groups):
        raise ConversionError("internal: no tensors (or an empty shard) to write", where=folder)
    weight_map: dict[str, str] = {}
    files: list[Path] = []
    total = 0
    for i, group in enumerate(groups):
        fname = shard_file_name(kind, i, len(groups))
        part = {n: t.contiguous() for n, t in group.items()}
        if kind == "safetensors":
            save_file(part, str(folder / fname), metadata={"format": "pt"})
            _check_written(folder / fname)
        else:
            torch.save(part, folder / fname)
        weight_map.update(dict.fromkeys(group, fname))
        total += sum(t.numel() * t.element_size() for t in part.values())
        files.append(folder / fname)
    if len(groups) > 1:
        write_index(folder, kind, weight_map, total)
    return files


class SafetensorsWriter:
    """Writes a .safetensors file tensor by tensor: the header (names, dtypes, shapes, offsets)
    first, then each tensor's bytes in the announced order, so a converter holds one tensor
    in memory at a time."""

    def __init__(self, path: Path, entries: Sequence[tuple[str, str, tuple[int, ...]]],
                 metadata: Mapping[str, str] | None = None) -> None:
        import json

        header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
        offset = 0
        self._order: list[tuple[str, int]] = []
        for name, dtype, shape in entries:
            n = SAFETENSORS_ITEMSIZE[dtype]
            for d in shape:
                n *= d
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
            self._order.append((name, n))
            offset += n
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self.path = path
        self._fh = path.open("wb")
        self._fh.write(len(raw).to_bytes(8, "little") + raw)
        self._next = 0

    def write(self, name: str, tensor: torch.Tensor) -> None:
        import torch

        want, nbytes = self._order[self._next]
        data = tensor.contiguous().reshape(-1).view(torch.uint8)
        if name != want or data.numel() != nbytes:
            raise ConversionError(f"internal: wrote {name!r} ({data.numel()} bytes), expected {want!r} ({nbytes})")
        self._fh.write(data.numpy().data)
        self._next += 1

    def close(self) -> None:
        """Close the file; when every tensor was written, read its header back. Called from a
        ``finally`` while an error propagates, it only closes (the error is what the user sees)."""
        import sys

        complete = self._next == len(self._order)
        self._fh.close()
        if sys.exc_info()[1] is not None:
            return
        if not complete:
            raise ConversionError("internal: safetensors file closed before every tensor was written")
        _check_written(self.path)


def _check_written(path: Path) -> None:
    """Read back the header of a safetensors file just written (offsets, sizes, file length)
    before it is renamed into place, so a short write is never published."""
    try:
        read_safetensors_header(path)
    except OpenLLMHubError as exc:
        raise ConversionError(f"the written file does not read back: {exc.what}", where=path,
                              fix="check the free space of the destination's disk and retry") from None


__all__ = [
    "BIN_INDEX", "BIN_SINGLE", "SAFE_INDEX", "SAFE_SINGLE", "HFFolder", "SafetensorsWriter", "WeightFiles",
    "WeightKind", "check_shard_contents", "check_shard_exists", "check_shard_name", "find_weights",
    "read_weight_map", "safetensors_names", "shard_file_name", "write_hf_weights", "write_index",
]
