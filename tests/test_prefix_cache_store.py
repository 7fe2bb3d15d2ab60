"""The engine-agnostic prefix store (openllm_hub.engines.prefix_cache): token-exact longest match, LRU budget."""

from __future__ import annotations

import pytest

from openllm_hub.engines.prefix_cache import PrefixCache, block_hashes


def test_longest_prefix_is_token_exact() -> None:
    cache = PrefixCache(10_000, block_tokens=4)
    a = list(range(20))
    b = list(range(10)) + [99] * 10
    assert cache.put(a, "A", 100) and cache.put(b, "B", 100)
    hit = cache.lookup([*list(range(13)), 7, 7])
    assert hit is not None and hit.value == "A" and hit.length == 13  # beyond the last whole block
    hit = cache.lookup([*list(range(10)), 99, 99, 5])
    assert hit is not None and hit.value == "B" and hit.length == 12
    hit = cache.lookup(a, max_length=len(a) - 1)  # the engine computes the last token itself
    assert hit is not None and hit.length == 19
    assert cache.lookup([1, 2, 3, 4, 5]) is None  # shares no whole block
    assert cache.lookup(list(range(3)) + [50] * 5) is None  # shares less than a block
    assert cache.lookup([0, 1, 2]) is None  # shorter than a block: not even looked up
    stats = cache.stats()
    assert stats["hits"] == 3 and stats["misses"] == 2 and stats["tokens_reused"] == 13 + 12 + 19


def test_covers_and_covered_entries_dropped() -> None:
    cache = PrefixCache(10_000, block_tokens=4)
    cache.put(list(range(8)), "short", 50)
    assert cache.covers(list(range(8))) and cache.covers(list(range(6)))
    assert not cache.covers(list(range(9)))
    cache.put(list(range(16)), "long", 80)  # serves every prompt the short one served
    assert len(cache) == 1 and cache.nbytes == 80
    hit = cache.lookup([*list(range(8)), -1])
    assert hit is not None and hit.value == "long" and hit.length == 8


def test_least_recently_used_evicted_within_budget() -> None:
    cache = PrefixCache(250, block_tokens=2)
    prompts = [[k] * 6 for k in range(3)]
    for k, ids in enumerate(prompts):
        cache.put(ids, k, 100)
    assert len(cache) == 2 and cache.nbytes == 200 and cache.stats()["evictions"] == 1
    assert cache.lookup(prompts[0]) is None  # the oldest went
    assert cache.lookup(prompts[1]) is not None  # now the most recently used
    cache.put([5] * 6, 5, 100)
    assert cache.lookup(prompts[2]) is None and cache.lookup(prompts[1]) is not None
    assert not cache.put([6] * 6, 6, 300)  # larger than the whole budget: not stored, nothing evicted
    assert len(cache) == 2
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0


def test_disabled_and_bad_arguments() -> None:
    off = PrefixCache(0)
    assert not off.enabled and not off.put(list(range(100)), "x", 1) and off.lookup(list(range(100))) is None
    with pytest.raises(ValueError):
        PrefixCache(-1)
    with pytest.raises(ValueError):
        PrefixCache(10, block_tokens=0)
    assert block_hashes([1, 2, 3], 2) != block_hashes([1, 3, 3], 2)
    assert block_hashes([1, 2, 3, 4], 2)[0] == block_hashes([1, 2, 9, 9], 2)[0]
    assert block_hashes([1, 2, 3, 4], 2)[1] != block_hashes([9, 2, 3, 4], 2)[1]  # chained
