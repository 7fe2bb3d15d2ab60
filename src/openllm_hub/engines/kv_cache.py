"""The key/value cache of a torch decoder: every layer's keys and values of the tokens seen so far.

Layout ``(layers, batch, heads, seq, head_dim)``: one key and one value buffer per layer,
each ``(batch, heads, capacity, head_dim)``, allocated on a layer's first append and grown by
doubling (between ``min_capacity`` and ``limit``). ``batch`` rows are the sequences decoded
together (1 for plain generation, the beams for beam search); ``heads`` are the key/value
heads (fewer than the query heads under grouped/multi-query attention).

One decoding step appends the new positions of every layer (:meth:`KVCache.append`, which
returns all keys/values so far for the attention), then moves the length on once
(:meth:`KVCache.advance`). All rows share one :attr:`KVCache.length` today.

Extension point (continuous batching, not implemented): per-row lengths would replace
``length`` (a ``lengths`` vector; rows shorter than the longest are masked), ``append`` would
write each row at its own offset, and sequences would be added or removed between steps by
row selection like :meth:`KVCache.reorder`; the layout and the per-layer buffers stay.

torch is imported inside the methods, so importing this module stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from openllm_hub.errors import InvalidParameterError

if TYPE_CHECKING:  # pragma: no cover
    import torch


class KVCache:
    """Keys and values of every layer for ``batch`` sequences of a common length.

    ``limit``: the most positions the cache may hold (the model's context); appending past
    it raises :class:`InvalidParameterError`. ``None``: no limit. ``min_capacity``: the
    positions allocated at least on a layer's first append (fewer, smaller reallocations
    for short prompts).
    """

    def __init__(self, layers: int, batch: int, heads: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device, *, limit: int | None = None, min_capacity: int = 16) -> None:
        self.layers, self.batch, self.heads, self.head_dim = layers, batch, heads, head_dim
        self.dtype, self.device, self.limit, self.min_capacity = dtype, device, limit, min_capacity
        #: positions cached in every layer (and every row) once the current step has advanced
        self.length = 0
        self._k: list[torch.Tensor | None] = [None] * layers
        self._v: list[torch.Tensor | None] = [None] * layers

    def capacity(self, layer: int) -> int:
        """Positions ``layer``'s buffers hold before they must grow (0 before its first append)."""
        buf = self._k[layer]
        return 0 if buf is None else int(buf.shape[2])

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k, v`` ``(batch, heads, new, head_dim)`` at positions ``length .. length+new``
        of ``layer``; return that layer's keys and values so far, ``(batch, heads, length+new,
        head_dim)`` views of the buffers (valid until the next append to the layer).

        Does not move :attr:`length`: call :meth:`advance` once every layer has appended.
        """
        new = int(k.shape[2])
        want = (self.batch, self.heads, new, self.head_dim)
        if tuple(k.shape) != want or tuple(v.shape) != want:
            raise ValueError(f"KV cache of layout {want}: got keys {tuple(k.shape)}, values {tuple(v.shape)}")
        need = self.length + new
        if self.limit is not None and need > self.limit:
            raise InvalidParameterError(f"the sequence ({need} tokens) exceeds the context ({self.limit})",
                                        where="KV cache", fix="shorten the prompt or generate fewer tokens")
        buf_k, buf_v = self._k[layer], self._v[layer]
        if buf_k is None or buf_v is None or buf_k.shape[2] < need:
            buf_k, buf_v = self._grow(layer, need)
        buf_k[:, :, self.length:need] = k
        buf_v[:, :, self.length:need] = v
        return buf_k[:, :, :need], buf_v[:, :, :need]

    def advance(self, n: int) -> None:
        """Count ``n`` more positions as cached (after every layer appended them)."""
        self.length += n

    def truncate(self, length: int) -> None:
        """Forget every position from ``length`` on (e.g. to reuse a cached prefix); the
        buffers keep their capacity and the next append writes at ``length``."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a KV cache of {self.length} positions to {length}")
        self.length = length

    def reorder(self, index: torch.Tensor) -> None:
        """Select batch rows: row ``i`` becomes old row ``index[i]`` (rows may be dropped or
        duplicated, e.g. the surviving beams of beam search); the batch becomes ``len(index)``."""
        self._k = [None if t is None else t.index_select(0, index) for t in self._k]
        self._v = [None if t is None else t.index_select(0, index) for t in self._v]
        self.batch = int(index.shape[0])

    def _grow(self, layer: int, need: int) -> tuple[torch.Tensor, torch.Tensor]:
        """New buffers for ``layer`` holding at least ``need`` positions (doubling, within
        ``min_capacity .. limit``), with the cached positions copied over."""
        import torch

        old_k, old_v = self._k[layer], self._v[layer]
        cap = max(need, self.min_capacity, 2 * self.capacity(layer))
        if self.limit is not None:
            cap = min(cap, self.limit)
        shape = (self.batch, self.heads, cap, self.head_dim)
        new_k = torch.empty(shape, dtype=self.dtype, device=self.device)
        new_v = torch.empty_like(new_k)
        if old_k is not None and old_v is not None and self.length:
            new_k[:, :, :self.length] = old_k[:, :, :self.length]
            new_v[:, :, :self.length] = old_v[:, :, :self.length]
        self._k[layer], self._v[layer] = new_k, new_v
        return new_k, new_v
