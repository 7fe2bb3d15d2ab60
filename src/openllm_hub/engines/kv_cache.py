"""The key/value cache of a torch decoder: every layer's keys and values of the tokens seen so far.

Layout ``(layers, batch, heads, seq, head_dim)``: one key and one value buffer per layer,
each ``(batch, heads, capacity, head_dim)``, allocated on a layer's first append and grown by
doubling (between ``min_capacity`` and ``limit``). ``batch`` rows are the sequences decoded
together (1 for plain generation, the beams for beam search); ``heads`` are the key/value
heads (fewer than the query heads under grouped/multi-query attention).

One decoding step appends the new positions of every layer (:meth:`KVCache.append`, which
returns all keys/values so far for the attention), then moves the length on once
(:meth:`KVCache.advance`). All rows share one :attr:`KVCache.length`.

Continuous batching (rows of different lengths): :meth:`KVCache.add_rows` appends another
cache's rows (a sequence whose prompt was read alone), which makes the cache **ragged**:
:attr:`KVCache.row_lengths` holds each row's length and :attr:`KVCache.length` the longest
(the buffers' used extent). A decoding step then writes one position per row at the row's
own offset (:meth:`KVCache.append_rows`, with :meth:`KVCache.row_mask` saying which positions
each row attends to: its own, the rest is zero padding) and moves every row on
(:meth:`KVCache.advance_rows`); :meth:`KVCache.reorder` drops rows (a sequence that left).
Rows are right-padded: a row's positions start at column 0, so its keys stay where they
were written and a row that joins or leaves moves no other row's positions.

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
        #: positions cached in every layer (and every row) once the current step has advanced;
        #: in a ragged cache, the longest row's
        self.length = 0
        #: each row's length in a ragged cache (rows of different lengths), else None
        self.row_lengths: list[int] | None = None
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
        if self.row_lengths is not None:
            raise ValueError("a ragged KV cache (rows of different lengths) appends with append_rows")
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

    def keys_values(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``layer``'s keys and values of the cached positions, ``(batch, heads, length,
        head_dim)`` views of the buffers (e.g. to store a read prompt in a prefix cache)."""
        if self.row_lengths is not None:
            raise ValueError("a ragged KV cache (rows of different lengths) has no common length to read")
        buf_k, buf_v = self._k[layer], self._v[layer]
        if buf_k is None or buf_v is None:
            raise ValueError(f"layer {layer} of the KV cache holds nothing yet")
        return buf_k[:, :, :self.length], buf_v[:, :, :self.length]

    def extend(self, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Append the same positions to every layer, ``layers[i]`` layer ``i``'s keys and values
        ``(batch, heads, new, head_dim)`` (e.g. a prefix restored from a prefix cache), and
        count them (:meth:`advance`)."""
        if len(layers) != self.layers:
            raise ValueError(f"a KV cache of {self.layers} layers cannot take {len(layers)}")
        for layer, (k, v) in enumerate(layers):
            self.append(layer, k, v)
        self.advance(int(layers[0][0].shape[2]) if layers else 0)

    def truncate(self, length: int) -> None:
        """Forget every position from ``length`` on (e.g. to reuse a cached prefix); the
        buffers keep their capacity and the next append writes at ``length``."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a KV cache of {self.length} positions to {length}")
        self.length = length

    def reorder(self, index: torch.Tensor) -> None:
        """Select batch rows: row ``i`` becomes old row ``index[i]`` (rows may be dropped or
        duplicated, e.g. the surviving beams of beam search); the batch becomes ``len(index)``.
        A ragged cache keeps each selected row's length."""
        self._k = [None if t is None else t.index_select(0, index) for t in self._k]
        self._v = [None if t is None else t.index_select(0, index) for t in self._v]
        self.batch = int(index.shape[0])
        if self.row_lengths is not None:
            self.row_lengths = [self.row_lengths[int(i)] for i in index.tolist()]
            self.length = max(self.row_lengths, default=0)

    # -- rows of different lengths (continuous batching)
    def add_rows(self, other: KVCache) -> None:
        """Append ``other``'s rows (same layers, heads, head_dim; a cache whose rows share its
        ``length``, e.g. one sequence's prompt read alone) after this cache's rows, each keeping
        its length; the cache becomes ragged. ``other`` must not be used afterwards."""
        import torch

        if other.row_lengths is not None:
            raise ValueError("only a cache whose rows share one length can be added as rows")
        if (other.layers, other.heads, other.head_dim) != (self.layers, self.heads, self.head_dim):
            raise ValueError(f"KV cache of {self.layers} layers x {self.heads} heads x {self.head_dim}: cannot add "
                             f"rows of {other.layers} x {other.heads} x {other.head_dim}")
        lengths = self.row_lengths if self.row_lengths is not None else [self.length] * self.batch
        if self.batch == 0:
            self._k, self._v = list(other._k), list(other._v)
        else:
            for layer in range(self.layers):
                cap = max(self.capacity(layer), other.capacity(layer))
                self._k[layer] = torch.cat([_pad_to(self._k[layer], cap, self.batch, self),
                                            _pad_to(other._k[layer], cap, other.batch, other)], dim=0)
                self._v[layer] = torch.cat([_pad_to(self._v[layer], cap, self.batch, self),
                                            _pad_to(other._v[layer], cap, other.batch, other)], dim=0)
        self.row_lengths = [*lengths, *[other.length] * other.batch]
        self.batch += other.batch
        self.length = max(self.row_lengths, default=0)

    def row_mask(self) -> torch.Tensor:
        """``(batch, length + 1)`` booleans, True where a row attends during the step that
        :meth:`append_rows` is part of: its own positions and the one it appends."""
        import torch

        lengths = torch.tensor(self._row_lengths(), device=self.device)
        return torch.arange(self.length + 1, device=self.device)[None, :] <= lengths[:, None]

    def append_rows(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store one new position per row, ``k, v`` ``(batch, heads, 1, head_dim)``, at each
        row's own length; return ``layer``'s keys and values ``(batch, heads, length+1,
        head_dim)`` (attend with :meth:`row_mask`: the rest is zero padding). Call
        :meth:`advance_rows` once every layer has appended."""
        import torch

        want = (self.batch, self.heads, 1, self.head_dim)
        if tuple(k.shape) != want or tuple(v.shape) != want:
            raise ValueError(f"KV cache of layout {want}: got keys {tuple(k.shape)}, values {tuple(v.shape)}")
        lengths = self._row_lengths()
        if self.limit is not None and max(lengths, default=0) + 1 > self.limit:
            raise InvalidParameterError(f"a sequence ({max(lengths) + 1} tokens) exceeds the context ({self.limit})",
                                        where="KV cache", fix="shorten the prompt or generate fewer tokens")
        if self.row_lengths is None:
            self.row_lengths = lengths
        need = self.length + 1
        buf_k, buf_v = self._k[layer], self._v[layer]
        if buf_k is None or buf_v is None or buf_k.shape[2] < need:
            buf_k, buf_v = self._grow(layer, need)
        rows = torch.arange(self.batch, device=buf_k.device)
        at = torch.tensor(lengths, device=buf_k.device)
        buf_k[rows, :, at] = k[:, :, 0]
        buf_v[rows, :, at] = v[:, :, 0]
        return buf_k[:, :, :need], buf_v[:, :, :need]

    def advance_rows(self) -> None:
        """Count one more position in every row (after every layer appended with :meth:`append_rows`)."""
        self.row_lengths = [n + 1 for n in self._row_lengths()]
        self.length = max(self.row_lengths, default=0)

    def _row_lengths(self) -> list[int]:
        return list(self.row_lengths) if self.row_lengths is not None else [self.length] * self.batch

    def _grow(self, layer: int, need: int) -> tuple[torch.Tensor, torch.Tensor]:
        """New buffers for ``layer`` holding at least ``need`` positions (doubling, within
        ``min_capacity .. limit``), with the cached positions copied over."""
        import torch

        old_k, old_v = self._k[layer], self._v[layer]
        cap = max(need, self.min_capacity, 2 * self.capacity(layer))
        if self.limit is not None:
            cap = min(cap, self.limit)
        shape = (self.batch, self.heads, cap, self.head_dim)
        # a ragged cache's shorter rows show their padding to the attention (masked, so it must be finite)
        new_k = (torch.empty if self.row_lengths is None else torch.zeros)(shape, dtype=self.dtype, device=self.device)
        new_v = torch.empty_like(new_k) if self.row_lengths is None else torch.zeros_like(new_k)
        if old_k is not None and old_v is not None and self.length:
            new_k[:, :, :self.length] = old_k[:, :, :self.length]
            new_v[:, :, :self.length] = old_v[:, :, :self.length]
        self._k[layer], self._v[layer] = new_k, new_v
        return new_k, new_v


def _pad_to(buf: torch.Tensor | None, cap: int, batch: int, cache: KVCache) -> torch.Tensor:
    """``buf`` (rows, heads, capacity, head_dim) widened with zeros to ``cap`` positions (an
    empty layer: all zeros), zeroing what lies past the cache's rows' lengths: a ragged
    cache's padding is masked in the attention, so it must be finite."""
    import torch

    out = torch.zeros((batch, cache.heads, cap, cache.head_dim), dtype=cache.dtype, device=cache.device)
    if buf is not None:
        lengths = cache._row_lengths()
        for row, n in enumerate(lengths):
            out[row, :, :n] = buf[row, :, :n]
    return out
