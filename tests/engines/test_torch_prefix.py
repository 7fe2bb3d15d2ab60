"""The torch engines' shared prefix-cache glue (engines.torch_prefix) and batch memory plan (plan_rows).

The glue over plain tensors: what is stored (copies of exactly the prompt's positions, never a
state with non-finite logits, nothing when off, covered or over budget), what a lookup gives
(cropped to the shared length, at most len(prompt) - 1), and that ``read_prompt`` reads only
the rest in the single path's chunks. The engines' own tests check real models against cold runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import torch

from openllm_hub.engines.kv_cache import KVCache
from openllm_hub.engines.prefix_cache import PrefixCache
from openllm_hub.engines.torch_batch import MIN_SLOT_TOKENS, plan_rows
from openllm_hub.engines.torch_prefix import lookup_kv, read_prompt, remembering, store_kv

LAYERS, HEADS, DIM = 2, 2, 4


def _kv(n: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(1, HEADS, n, DIM, generator=g), torch.randn(1, HEADS, n, DIM, generator=g))
            for _ in range(LAYERS)]


def _bytes(n: int) -> int:
    return 2 * LAYERS * HEADS * n * DIM * 4


def test_store_copies_exactly_the_prompt_and_lookup_crops() -> None:
    store = PrefixCache(2**20, block_tokens=8)
    ids = list(range(100, 140))
    layers = _kv(40)
    assert store_kv(store, ids, layers, np.zeros(5, np.float32))
    assert store.stats()["bytes"] == _bytes(40)
    layers[0][0].fill_(7.0)  # the live cache changes afterwards: the stored copy does not
    n, prefix = lookup_kv(store, [*ids[:30], 1, 2, 3])
    assert n == 30 and len(prefix) == LAYERS and tuple(prefix[0][0].shape) == (1, HEADS, 30, DIM)
    assert not bool((prefix[0][0] == 7.0).any())
    torch.testing.assert_close(prefix[1][1], _kv(40)[1][1][:, :, :30], rtol=0, atol=0)
    n, _ = lookup_kv(store, ids)  # the same prompt: all but its last id (its logits are needed)
    assert n == 39
    assert lookup_kv(store, ids[:5] + list(range(40))) == (0, [])  # under one block shared


def test_what_is_never_stored() -> None:
    ids = list(range(40))
    store = PrefixCache(2**20, block_tokens=8)
    assert not store_kv(store, ids, _kv(40), np.array([0.0, np.nan], np.float32))  # a broken state
    assert not store_kv(store, ids, _kv(40), np.array([np.inf], np.float32))
    assert not store_kv(store, ids[:7], _kv(7), np.zeros(2, np.float32))  # shorter than a block
    assert not store_kv(PrefixCache(0), ids, _kv(40), np.zeros(2, np.float32))  # off
    assert not store_kv(PrefixCache(_bytes(40) - 1, block_tokens=8), ids, _kv(40), np.zeros(2, np.float32))
    assert len(store) == 0
    assert store_kv(store, ids, _kv(40), np.zeros(2, np.float32))
    assert not store_kv(store, ids[:20], _kv(20), np.zeros(2, np.float32))  # held already
    # a cache that does not hold every position (a sliding window) is not stored
    assert not store_kv(store, list(range(50, 90)), _kv(32), np.zeros(2, np.float32))


def test_read_prompt_reads_only_the_rest_in_chunks() -> None:
    """Through a real KVCache: a cold read, then a prompt sharing 40 ids reads from id 40 on
    (chunks of 16), and its cache holds the stored keys for the shared positions."""
    store = PrefixCache(2**20, block_tokens=8)

    def run(ids: list[int]) -> tuple[KVCache, list[tuple[int, int]], int]:
        cache = KVCache(LAYERS, 1, HEADS, DIM, torch.float32, torch.device("cpu"))
        calls: list[tuple[int, int]] = []

        def forward(new: Sequence[int]) -> npt.NDArray[np.float32]:
            calls.append((cache.length, len(new)))
            kv = torch.tensor(list(new), dtype=torch.float32).view(1, 1, -1, 1).expand(1, HEADS, -1, DIM)
            cache.extend([(kv, -kv)] * LAYERS)
            return np.full(3, float(new[-1]), np.float32)

        logits, cached = read_prompt(store, ids, forward=forward, chunk=16, load=cache.extend,
                                     layers=lambda: [cache.keys_values(i) for i in range(LAYERS)])
        assert float(logits[0]) == ids[-1]
        return cache, calls, cached

    first = list(range(1, 51))
    _, calls, cached = run(first)
    assert cached == 0 and calls == [(0, 16), (16, 16), (32, 16), (48, 2)]
    second = [*first[:40], 900, 901, 902]
    cache, calls, cached = run(second)
    assert cached == 40 and calls == [(40, 3)]
    keys, values = cache.keys_values(1)
    assert keys[0, 0, :, 0].tolist() == [float(i) for i in second] and values[0, 1, 39, 0] == -40.0
    assert store.stats()["hits"] == 1 and len(store) == 2


def test_remembering_stores_once_the_prompt_is_read() -> None:
    store = PrefixCache(2**20, block_tokens=8)
    ids = list(range(20))
    cache = KVCache(LAYERS, 1, HEADS, DIM, torch.float32, torch.device("cpu"))

    def step(new: Sequence[int]) -> npt.NDArray[np.float32]:
        cache.extend(_kv(len(new)))
        return np.zeros(2, np.float32)

    run = remembering(store, ids, step, length=lambda: cache.length,
                      layers=lambda: [cache.keys_values(i) for i in range(LAYERS)])
    run(ids[:16])
    assert len(store) == 0
    run(ids[16:])
    assert store.covers(ids) and store.stats()["bytes"] == _bytes(20)
    run([5])  # a generated token: nothing more stored
    assert len(store) == 1
    assert remembering(PrefixCache(0), ids, step, length=lambda: 0, layers=list) is step  # off: the step itself


def test_plan_rows() -> None:
    per = 1000
    # everything fits: every slot holds the whole context, and more rows than slots fit the budget
    assert plan_rows(10**9, per, 2048, 4) == (10**9 // per // 2048, 2048)
    # four full-context slots do not fit: slots shrink so that four fit
    rows, slot = plan_rows(4 * 1000 * per, per, 2048, 4)
    assert slot == 1000 and rows == 4
    # not even MIN_SLOT_TOKENS per slot: fewer rows of MIN_SLOT_TOKENS (the others wait)
    rows, slot = plan_rows(3 * MIN_SLOT_TOKENS * per, per, 4096, 8)
    assert slot == MIN_SLOT_TOKENS and rows == 3
    # less than one floor-sized slot: one row of what fits
    assert plan_rows(100 * per, per, 4096, 2) == (1, 100)
    # a short context is its own floor
    assert plan_rows(10 * 64 * per, per, 64, 16) == (10, 64)
    # unknown budget or cost: no cap
    assert plan_rows(None, per, 2048, 4) == (None, 2048)
    assert plan_rows(10**9, None, 2048, 4) == (None, 2048)
    for budget, ctx, slots in ((5 * 10**6, 2048, 3), (7 * 10**5, 4096, 8), (10**8, 512, 1)):
        rows, slot = plan_rows(budget, per, ctx, slots)
        assert rows is not None and slot is not None and rows * slot * per <= budget
