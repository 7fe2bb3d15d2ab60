"""Attention layout and position ids of a GLM-130B sequence, as its ``generate.py`` builds them.

A sequence is ``context <sop> generated...``. Every position attends to the whole context
(bidirectional prefix) and causally to ``<sop>`` and what follows. Position ids count up
through the context; from ``<sop>`` on they stay at the position of the blank being filled
(``[MASK]`` first, else ``[sMASK]``) or keep counting for ``[gMASK]`` (left-to-right
generation). GLM-130B uses 1D positions only (no block position as in GLM-10B/ChatGLM).
A sequence without ``<sop>`` is treated as plain causal text. Pure Python.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Layout:
    """``context``: leading tokens every position sees (the index of ``<sop>``; 0 = causal).
    ``mask_position``: position id of ``<sop>`` and everything after, or None to keep counting."""

    context: int
    mask_position: int | None

    def position(self, index: int) -> int:
        if self.mask_position is not None and index >= self.context:
            return self.mask_position
        return index

    def positions(self, start: int, count: int) -> list[int]:
        return [self.position(i) for i in range(start, start + count)]


def layout_of(ids: Sequence[int], commands: Mapping[str, int]) -> Layout:
    """The layout of ``ids`` (see the module docstring)."""
    sop = commands["<sop>"]
    try:
        context = list(ids).index(sop)
    except ValueError:
        return Layout(0, None)
    head = list(ids[:context])
    for mark in ("[MASK]", "[sMASK]"):
        if commands[mark] in head:
            return Layout(context, head.index(commands[mark]))
    return Layout(context, None)
