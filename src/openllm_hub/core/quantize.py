"""Quantizer: the interface a family implements to quantize a checkpoint on disk."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class QuantizeRequest:
    src: Path
    dst: Path
    scheme: str
    progress: bool
    threads: int | None = None


@dataclass(frozen=True)
class Quantizer:
    """Quantizes files of ``format`` into ``schemes`` (e.g. q4_0, q4_K_M, int8).

    ``run`` writes the complete output at ``request.dst`` (a temporary file, or an existing
    empty folder when ``output_is_dir``). ``bits_per_weight`` documents each scheme's size.
    """

    format: str
    schemes: tuple[str, ...]
    run: Callable[[QuantizeRequest], None]
    output_is_dir: bool = False
    description: str = ""

    def scheme(self, name: str) -> str | None:
        """The scheme ``name`` stands for, case-insensitively (``Q4_K_M`` as model cards write it is
        ``q4_K_M``), or None when this quantizer has no such scheme."""
        return next((s for s in self.schemes if s.lower() == name.lower()), None)
