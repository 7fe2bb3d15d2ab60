"""LoraMerger: the interface a family implements to merge LoRA adapters into base weights."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class MergeRequest:
    base: Path
    base_format: str
    adapters: tuple[Path, ...]
    dst: Path
    output_type: str
    progress: bool


@dataclass(frozen=True)
class LoraMerger:
    """Merges PEFT-style adapters (applied in the order given) into a base checkpoint.

    ``run`` writes the merged checkpoint into ``request.dst``, an existing empty temporary
    folder renamed into place by the core when ``run`` returns.
    """

    base_formats: tuple[str, ...]
    output_types: tuple[str, ...]
    run: Callable[[MergeRequest], None]
    description: str = ""
