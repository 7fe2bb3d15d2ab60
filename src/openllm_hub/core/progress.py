"""Progress bars for long work: shown on a terminal, silent in a pipe or under CI."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def progress_enabled() -> bool:
    """True when stderr is a terminal and ``OPENLLM_HUB_NO_PROGRESS`` is unset."""
    if os.environ.get("OPENLLM_HUB_NO_PROGRESS"):
        return False
    return sys.stderr.isatty()


class Progress:
    """A thin wrapper over tqdm that does nothing when disabled (no import either)."""

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "it", enabled: bool | None = None) -> None:
        self._bar: Any = None
        if progress_enabled() if enabled is None else enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, leave=False, file=sys.stderr,
                             unit_scale=unit == "B", dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def set_description(self, desc: str) -> None:
        if self._bar is not None:
            self._bar.set_description(desc)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def track(items: Iterable[T], *, total: int | None = None, desc: str = "", unit: str = "it",
          enabled: bool | None = None) -> Iterator[T]:
    """Iterate ``items`` with a progress bar (when enabled)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(total=total, desc=desc, unit=unit, enabled=enabled) as bar:
        for item in items:
            yield item
            bar.update()
