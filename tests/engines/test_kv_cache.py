"""The shared KV cache: layout, append/advance, growth within the limit, truncation and row
selection."""

from __future__ import annotations

import pytest
import torch

from openllm_hub.engines.kv_cache import KVCache
from openllm_hub.errors import InvalidParameterError

B, H, D = 2, 3, 4


def _cache(**kw: object) -> KVCache:
    return KVCache(2, B, H, D, torch.float32, torch.device("cpu"), **kw)  # type: ignore[arg-type]


def _kv(start: int, n: int, batch: int = B) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys/values whose entries encode (row, head, position) so that any misplacement shows."""
    row = torch.arange(batch)[:, None, None, None] * 1000
    head = torch.arange(H)[None, :, None, None] * 100
    pos = torch.arange(start, start + n)[None, None, :, None]
    k = (row + head + pos + torch.zeros(1, 1, 1, D)).float()
    return k, -k


def _step(cache: KVCache, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One decoding step of n positions over both layers, as a network runs it."""
    k, v = _kv(cache.length, n, cache.batch)
    out = cache.append(0, k, v)
    cache.append(1, k * 2, v * 2)
    cache.advance(n)
    return out


def test_append_returns_every_position_so_far() -> None:
    cache = _cache()
    keys, values = _step(cache, 3)
    assert keys.shape == (B, H, 3, D) and cache.length == 3
    keys, values = _step(cache, 1)
    assert keys.shape == (B, H, 4, D) and cache.length == 4
    want_k, want_v = _kv(0, 4)
    assert torch.equal(keys, want_k) and torch.equal(values, want_v)
    k1, _ = cache.append(1, *(t * 2 for t in _kv(4, 2)))
    assert torch.equal(k1, _kv(0, 6)[0] * 2)  # layers are kept apart
    assert cache.length == 4  # append alone does not move the length


def test_growth_doubles_within_min_capacity_and_limit() -> None:
    cache = _cache(min_capacity=4, limit=20)
    assert cache.capacity(0) == 0
    caps = []
    for n in (3, 1, 1, 4, 7, 4):
        keys, _ = _step(cache, n)
        caps.append(cache.capacity(0))
        assert torch.equal(keys, _kv(0, cache.length)[0])  # content survives every reallocation
    # 3 -> max(3, 4); 4 fits; 5 -> 8; 9 -> 16; 16 fits; 20 -> min(32, limit)
    assert caps == [4, 4, 8, 16, 16, 20]


def test_appending_past_the_limit_is_refused_and_changes_nothing() -> None:
    cache = _cache(limit=5)
    _step(cache, 4)
    with pytest.raises(InvalidParameterError, match=r"sequence \(6 tokens\) exceeds the context \(5\)"):
        cache.append(0, *_kv(4, 2))
    assert cache.length == 4
    keys, _ = _step(cache, 1)  # exactly at the limit is fine
    assert torch.equal(keys, _kv(0, 5)[0])


def test_truncate_forgets_the_tail() -> None:
    cache = _cache()
    _step(cache, 6)
    cache.truncate(2)
    assert cache.length == 2
    k, v = torch.full((B, H, 1, D), 7.0), torch.full((B, H, 1, D), 8.0)
    keys, values = cache.append(0, k, v)
    assert keys.shape == (B, H, 3, D)
    assert torch.equal(keys[:, :, :2], _kv(0, 2)[0]) and torch.all(keys[:, :, 2] == 7.0)
    assert torch.all(values[:, :, 2] == 8.0)
    for bad in (-1, 3):  # the length is 2 until the next advance
        with pytest.raises(ValueError, match="truncate"):
            cache.truncate(bad)


def test_reorder_selects_and_duplicates_rows() -> None:
    cache = _cache()
    _step(cache, 3)
    cache.reorder(torch.tensor([1, 1, 0]))
    assert cache.batch == 3
    keys, _ = _step(cache, 1)
    assert keys.shape == (3, H, 4, D)
    old = _kv(0, 3)[0]
    assert torch.equal(keys[0, :, :3], old[1]) and torch.equal(keys[1, :, :3], old[1])
    assert torch.equal(keys[2, :, :3], old[0])
    assert torch.equal(keys[:, :, 3:], _kv(3, 1, batch=3)[0])


def test_wrong_layout_is_refused() -> None:
    cache = _cache()
    k, v = _kv(0, 2)
    with pytest.raises(ValueError, match="layout"):
        cache.append(0, k.transpose(1, 2), v.transpose(1, 2))  # (batch, seq, heads, dim)
    with pytest.raises(ValueError, match="layout"):
        cache.append(0, k[:1], v[:1])  # one row of two: broadcasting would hide it
    assert cache.length == 0 and cache.capacity(0) == 0


# ---- rows of different lengths (continuous batching) --------------------------------------------
def _one(n: int, mark: float, limit: int | None = None) -> KVCache:
    """A one-row cache of ``n`` positions whose keys are ``mark + position`` (values negated)."""
    cache = KVCache(2, 1, H, D, torch.float32, torch.device("cpu"), limit=limit, min_capacity=2)
    k = (torch.arange(n).float()[None, None, :, None] + mark).expand(1, H, n, D).contiguous()
    for layer in range(2):
        cache.append(layer, k, -k)
    cache.advance(n)
    return cache


def test_rows_of_different_lengths_join_append_at_their_own_offsets_and_leave() -> None:
    batch = KVCache(2, 0, H, D, torch.float32, torch.device("cpu"), limit=20)
    batch.add_rows(_one(3, 100.0))
    batch.add_rows(_one(5, 200.0))
    batch.add_rows(_one(1, 300.0))
    assert batch.batch == 3 and batch.row_lengths == [3, 5, 1] and batch.length == 5
    mask = batch.row_mask()
    assert mask.tolist() == [[j <= n for j in range(6)] for n in (3, 5, 1)]
    new = torch.tensor([7.0, 8.0, 9.0])[:, None, None, None].expand(3, H, 1, D)
    for layer in range(2):
        keys, values = batch.append_rows(layer, new, -new)
        assert keys.shape == (3, H, 6, D)
        for row, (n, mark) in enumerate(((3, 100.0), (5, 200.0), (1, 300.0))):
            assert torch.equal(keys[row, 0, :n, 0], torch.arange(n).float() + mark)  # its own positions stay
            assert float(keys[row, 0, n, 0]) == 7.0 + row  # the new one at its own length
            assert torch.all(keys[row, :, n + 1:] == 0) and torch.all(values[row, :, n + 1:] == 0)  # finite padding
    batch.advance_rows()
    assert batch.row_lengths == [4, 6, 2] and batch.length == 6
    batch.reorder(torch.tensor([0, 2]))  # the longest row leaves
    assert batch.row_lengths == [4, 2] and batch.length == 4 and batch.row_mask().shape == (2, 5)
    batch.reorder(torch.tensor([], dtype=torch.long))
    assert batch.batch == 0 and batch.length == 0
    batch.add_rows(_one(2, 400.0))  # an emptied batch takes new rows
    assert batch.row_lengths == [2]


def test_ragged_rows_grow_and_respect_the_limit() -> None:
    batch = KVCache(2, 0, H, D, torch.float32, torch.device("cpu"), limit=6)
    batch.add_rows(_one(2, 100.0))
    batch.add_rows(_one(4, 200.0))
    for _ in range(2):
        for layer in range(2):
            keys, _ = batch.append_rows(layer, torch.ones(2, H, 1, D), torch.ones(2, H, 1, D))
        batch.advance_rows()
    assert batch.row_lengths == [4, 6] and batch.capacity(0) == 6
    assert torch.equal(keys[1, 0, :4, 0], torch.arange(4).float() + 200.0)  # kept through the growth
    assert torch.all(keys[0, :, 4:] == 0)
    with pytest.raises(InvalidParameterError, match="exceeds the context"):
        batch.append_rows(0, torch.ones(2, H, 1, D), torch.ones(2, H, 1, D))
    with pytest.raises(ValueError, match="append_rows"):
        batch.append(0, torch.ones(2, H, 1, D), torch.ones(2, H, 1, D))
