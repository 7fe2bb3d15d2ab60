"""Sniffing a path: what it holds, read cheaply and once, shared by every family's detect().

A :class:`Probe` reads on demand and caches: the GGUF header, ``config.json``,
``params.json``, the folder listing and checkpoint tensor names (from safetensors headers or
an index file). It also records what it examined, for the error shown when no family
recognises the path. Formats are judged by content, never by a file name alone.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any

from openllm_hub.core.gguf_check import GGUF_MAGIC, check_gguf, read_gguf_layout
from openllm_hub.errors import CorruptFileError, InvalidParameterError


def read_gguf_metadata(path: str | Path, *, max_array: int = 64) -> dict[str, Any]:
    """Read a GGUF file's key/value metadata (arrays longer than ``max_array`` are elided to
    their length) plus ``__version__``, ``__n_tensors__``. Pure Python, no gguf package.

    The file's structure (header and tensor table against the file size) and its
    hyper-parameters' bounds are validated on the way (:mod:`openllm_hub.core.gguf_check`),
    so every reader of a GGUF, detection first, refuses a damaged one with one clear error."""
    if max_array == 64:
        return dict(check_gguf(path, model=False).metadata)
    layout = read_gguf_layout(path, max_array=max_array)
    return dict(layout.metadata)


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
        try:
            with self.path.open("rb") as fh:
                data = fh.read(16)
        except OSError as exc:
            raise InvalidParameterError(f"cannot read the file: {exc.strerror or exc}", where=self.path,
                                        fix="check the file's permissions") from None
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
