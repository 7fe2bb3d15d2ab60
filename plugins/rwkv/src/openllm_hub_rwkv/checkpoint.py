"""Tensor names, shapes and dtypes of a PyTorch ``.pth`` state dict, read without torch.

``detect()`` must be cheap and import no engine, yet an RWKV checkpoint is only recognisable
by its tensor names and shapes. Both live in the checkpoint's pickle (``data.pkl`` inside the
zip that ``torch.save`` writes, or the object pickle of the legacy format), which is small
next to the tensor data. This module reads that pickle with an unpickler that resolves only
an allow-list of names (tensor rebuild functions, storage types, ``OrderedDict``) to inert
stand-ins, so nothing from the file runs and no tensor bytes are read. A pickle that names
anything else raises :class:`~openllm_hub.errors.UnsafeCheckpointError`.
"""

from __future__ import annotations

import collections
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from openllm_hub.plugin import CorruptFileError, UnsafeCheckpointError

#: torch storage class name -> (dtype name, bytes per element)
_STORAGES: dict[str, tuple[str, int]] = {
    "FloatStorage": ("float32", 4),
    "DoubleStorage": ("float64", 8),
    "HalfStorage": ("float16", 2),
    "BFloat16Storage": ("bfloat16", 2),
    "LongStorage": ("int64", 8),
    "IntStorage": ("int32", 4),
    "ShortStorage": ("int16", 2),
    "CharStorage": ("int8", 1),
    "ByteStorage": ("uint8", 1),
    "BoolStorage": ("bool", 1),
}
#: Magic number that opens a legacy (pre-zip) torch.save file.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


@dataclass(frozen=True)
class TensorMeta:
    """What the pickle says about one tensor."""

    shape: tuple[int, ...]
    dtype: str

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class _StorageType:
    dtype: str


@dataclass(frozen=True)
class _Storage:
    dtype: str


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *rest: Any) -> TensorMeta:
    dtype = storage.dtype if isinstance(storage, _Storage) else "unknown"
    return TensorMeta(tuple(int(s) for s in size), dtype)


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any, *rest: Any) -> Any:
    return data


class _IndexUnpickler(pickle.Unpickler):
    """Resolves only the names a plain tensor state dict needs, to inert stand-ins."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return _rebuild_parameter
        if module == "torch" and name in _STORAGES:
            return _StorageType(_STORAGES[name][0])
        raise UnsafeCheckpointError(
            f"the checkpoint's pickle references {module}.{name}, which a plain state dict never needs",
            fix="load only checkpoints from sources you trust; re-save it as a plain state dict",
        )

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and len(pid) >= 2 and pid[0] == "storage":
            stype = pid[1]
            return _Storage(stype.dtype if isinstance(stype, _StorageType) else "unknown")
        raise UnsafeCheckpointError(f"unexpected persistent id {pid!r} in the checkpoint's pickle")


def _unpickle(fh: IO[bytes]) -> Any:
    return _IndexUnpickler(fh).load()


def is_torch_file(path: Path) -> bool:
    """Whether ``path`` looks like a ``torch.save`` file (zip with data.pkl, or legacy pickle)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(4)
    except OSError:
        return False
    if head[:2] == b"PK":
        return True
    return head[:2] == b"\x80\x02"  # legacy format: protocol-2 pickle of the magic number


@dataclass(frozen=True)
class PthIndex:
    """A checkpoint's tensors (name -> meta, in file order) and its plain non-tensor entries."""

    tensors: dict[str, TensorMeta]
    extras: dict[str, Any]


def read_pth_index(path: str | Path) -> PthIndex:
    """Read the tensor names (in file order), shapes and dtypes of a ``torch.save`` state dict.

    Raises :class:`CorruptFileError` when the file is not a readable torch checkpoint and
    :class:`UnsafeCheckpointError` when its pickle needs more than a state dict.
    """
    p = Path(path)
    try:
        if zipfile.is_zipfile(p):
            with zipfile.ZipFile(p) as zf:
                names = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
                if not names:
                    raise CorruptFileError("zip file without a torch data.pkl: not a torch.save checkpoint", where=p)
                with zf.open(names[0]) as fh:
                    obj = _unpickle(fh)
        else:
            with p.open("rb") as fh:
                magic = _unpickle(fh)
                if magic != _LEGACY_MAGIC:
                    raise CorruptFileError("not a torch.save checkpoint (no zip archive, no legacy magic)", where=p)
                _unpickle(fh)  # protocol version
                _unpickle(fh)  # system info
                obj = _unpickle(fh)
    except UnsafeCheckpointError as exc:
        raise UnsafeCheckpointError(exc.what, where=p, fix=exc.fix) from None
    except CorruptFileError:
        raise
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, OSError, ValueError, TypeError,
            AttributeError, IndexError, KeyError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"cannot read the checkpoint's pickle: {type(exc).__name__}: {exc}", where=p,
                               fix="download the checkpoint again") from None
    if not isinstance(obj, dict):
        raise CorruptFileError(f"the checkpoint holds a {type(obj).__name__}, not a state dict", where=p)
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, TensorMeta)}
    extras = {str(k): v for k, v in obj.items() if isinstance(v, str | int | float | bool)}
    return PthIndex(tensors, extras)
