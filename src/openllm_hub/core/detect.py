"""Sniffing a path: what it holds, read cheaply and once, shared by every family's detect().

A :class:`Probe` reads on demand and caches: the GGUF header, ``config.json``,
``params.json``, the folder listing and checkpoint tensor names (from safetensors headers or
an index file). It also records what it examined, for the error shown when no family
recognises the path. Formats are judged by content, never by a file name alone.
"""

from __future__ import annotations

import json
import struct
from functools import cached_property
from pathlib import Path
from typing import Any, BinaryIO

from openllm_hub.errors import CorruptFileError

GGUF_MAGIC = b"GGUF"
# GGUF metadata value types (gguf spec): size in bytes of the fixed-size ones
_GGUF_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_GGUF_FMT = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def _read_exact(fh: BinaryIO, n: int, path: Path) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise CorruptFileError("GGUF header is truncated", where=path, fix="download or convert the file again")
    return data


def read_gguf_metadata(path: str | Path, *, max_array: int = 64) -> dict[str, Any]:
    """Read a GGUF file's key/value metadata (arrays longer than ``max_array`` are elided to
    their length) plus ``__version__``, ``__n_tensors__``. Pure Python, no gguf package."""
    p = Path(path)
    with p.open("rb") as fh:
        if _read_exact(fh, 4, p) != GGUF_MAGIC:
            raise CorruptFileError("not a GGUF file (wrong magic)", where=p)
        (version,) = struct.unpack("<I", _read_exact(fh, 4, p))
        if version not in (2, 3):
            raise CorruptFileError(f"unsupported GGUF version {version}", where=p, fix="reconvert with a current tool")
        n_tensors, n_kv = struct.unpack("<QQ", _read_exact(fh, 16, p))
        if n_kv > 1_000_000 or n_tensors > 10_000_000:
            raise CorruptFileError("GGUF header counts are implausible", where=p)

        def read_str() -> str:
            (n,) = struct.unpack("<Q", _read_exact(fh, 8, p))
            if n > 1 << 24:
                raise CorruptFileError("GGUF string length is implausible", where=p)
            return _read_exact(fh, n, p).decode("utf-8", errors="replace")

        def read_value(vtype: int) -> Any:
            if vtype in _GGUF_FIXED:
                return struct.unpack(_GGUF_FMT[vtype], _read_exact(fh, _GGUF_FIXED[vtype], p))[0]
            if vtype == _GGUF_STRING:
                return read_str()
            if vtype == _GGUF_ARRAY:
                (etype,) = struct.unpack("<I", _read_exact(fh, 4, p))
                (count,) = struct.unpack("<Q", _read_exact(fh, 8, p))
                if count > max_array and etype in _GGUF_FIXED:
                    fh.seek(count * _GGUF_FIXED[etype], 1)
                    return {"__array_len__": count}
                items = [read_value(etype) for _ in range(count)]
                return items if count <= max_array else {"__array_len__": count}
            raise CorruptFileError(f"unknown GGUF value type {vtype}", where=p)

        meta: dict[str, Any] = {"__version__": version, "__n_tensors__": n_tensors}
        for _ in range(n_kv):
            key = read_str()
            (vtype,) = struct.unpack("<I", _read_exact(fh, 4, p))
            meta[key] = read_value(vtype)
    return meta


class Probe:
    """Cached, lazy facts about one input path, for families' ``detect`` functions."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.examined: list[str] = []

    def _note(self, what: str) -> None:
        if what not in self.examined:
            self.examined.append(what)

    @cached_property
    def files(self) -> list[str]:
        """Names in the folder (or the file's own name)."""
        if self.path.is_dir():
            names = sorted(p.name for p in self.path.iterdir())
            self._note(f"folder listing ({len(names)} entries)")
            return names
        return [self.path.name]

    def has(self, name: str) -> bool:
        return self.path.is_dir() and (self.path / name).is_file()

    @cached_property
    def head(self) -> bytes:
        """First 16 bytes of a file (empty for folders)."""
        if not self.path.is_file():
            return b""
        with self.path.open("rb") as fh:
            data = fh.read(16)
        self._note(f"first bytes {data[:8]!r}")
        return data

    @cached_property
    def is_gguf(self) -> bool:
        return self.head[:4] == GGUF_MAGIC

    @cached_property
    def gguf(self) -> dict[str, Any] | None:
        """GGUF metadata, or None when not a GGUF file (raises on a corrupt header)."""
        if not self.is_gguf:
            return None
        meta = read_gguf_metadata(self.path)
        self._note(f"GGUF metadata (general.architecture={meta.get('general.architecture')!r})")
        return meta

    def json(self, name: str) -> dict[str, Any] | None:
        """A JSON file in the folder, or None when absent or unreadable."""
        key = f"_json_{name}"
        if key not in self.__dict__:
            value: dict[str, Any] | None = None
            if self.has(name):
                try:
                    loaded = json.loads((self.path / name).read_text(encoding="utf-8"))
                    value = loaded if isinstance(loaded, dict) else None
                    self._note(f"{name}" + (f" (model_type={value.get('model_type')!r})" if value else ""))
                except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
                    self._note(f"{name} (unreadable)")
            self.__dict__[key] = value
        return self.__dict__[key]  # type: ignore[no-any-return]

    @property
    def config(self) -> dict[str, Any] | None:
        """``config.json`` of a HuggingFace-layout folder."""
        return self.json("config.json")

    @cached_property
    def tensor_names(self) -> set[str]:
        """Tensor names from safetensors headers or a shard index, without reading tensors."""
        from openllm_hub.core.io import read_safetensors_header

        names: set[str] = set()
        if not self.path.is_dir():
            if self.head[:8] and self.path.suffix == ".safetensors":
                names = {k for k in read_safetensors_header(self.path) if k != "__metadata__"}
            return names
        for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
            data = self.json(index)
            if data and isinstance(data.get("weight_map"), dict):
                return set(data["weight_map"])
        for name in self.files:
            if name.endswith(".safetensors"):
                try:
                    names |= {k for k in read_safetensors_header(self.path / name) if k != "__metadata__"}
                    self._note(f"tensor names in {name}")
                except CorruptFileError:
                    self._note(f"{name} (corrupt header)")
        return names

    def describe(self) -> str:
        """What was examined, for error messages."""
        if not self.path.exists():
            return "nothing (the path does not exist)"
        _ = self.files
        return "; ".join(self.examined) or "the path itself"
