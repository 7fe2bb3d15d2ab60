"""The llama.cpp prefix cache (openllm_hub.engines.prefix_cache): prompts sharing a long prefix reuse its KV cells.

A prompt that starts with a stored prompt's ids (a shared system prompt) must give what it gives
cold: logits within a stated bound and the same greedy tokens, on the single path and in the
batched decoder, also when a tiny budget evicts entries, and a cancelled sequence must leave
nothing in the cache. Through the server, answers are the same with the cache on and off.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import openllm_hub
from openllm_hub.core.config import GenerationConfig
from openllm_hub.engines.llama_cpp import LlamaCppModel
from openllm_hub.engines.llama_cpp_batch import LlamaCppBatchDecoder
from openllm_hub.engines.prefix_cache import PrefixCache
from openllm_hub.testing import (
    PREFIX_QUESTIONS,
    check_prefix_cache_hits_equal_cold,
    check_prefix_cache_join_with_a_hit_equals_cold,
    check_prefix_cache_server_answers_equal,
    check_prefix_cache_what_is_stored,
    system_prompt,
)

#: A cache hit's logits against the cold run's, relative to the row's range. The reused cells were
#: computed for another prompt, read in other chunk sizes (llama.cpp's kernels may sum a chunk in
#: another order) and sit at other cells of the unified KV cache; the batched decoder's own bound
#: (test_batch_gguf.py) applies: a few f32 roundings (measured: 5e-7 on the hit, 9e-7 on the cold prompt).
BOUND = 2e-6

SYSTEM = system_prompt(12)
QUESTIONS = list(PREFIX_QUESTIONS[:4])


@pytest.fixture(scope="module")
def gguf(tiny_gguf_factory: Callable[..., Path]) -> Path:
    return tiny_gguf_factory("f32", num_kv_heads=2)


@pytest.fixture(scope="module")
def cold(gguf: Path) -> Iterator[LlamaCppModel]:
    with openllm_hub.load(gguf, device="cpu", threads=1, kv_cache_type="f32", prefix_cache_mib=0) as m:
        assert isinstance(m, LlamaCppModel)
        yield m


@pytest.fixture
def cached(gguf: Path) -> Iterator[LlamaCppModel]:
    with openllm_hub.load(gguf, device="cpu", threads=1, kv_cache_type="f32", prefix_cache_mib=64) as m:
        assert isinstance(m, LlamaCppModel)
        yield m


def _text(i: int, system: str = SYSTEM) -> str:
    return f"{system}\nQ: {QUESTIONS[i]}\nA:"


def _prompt(model: LlamaCppModel, i: int, system: str = SYSTEM) -> list[int]:
    return model.tokenize(_text(i, system))


def _cold_tokens(cold: LlamaCppModel, i: int, system: str = SYSTEM, n: int = 8) -> list[int]:
    return list(cold.generate(_text(i, system), max_new_tokens=n, temperature=0.0).token_ids)


def _config(model: LlamaCppModel, **kw: Any) -> GenerationConfig:
    return GenerationConfig.build(model.generation_defaults, **{"temperature": 0.0, **kw}).with_seed()


def _relative(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(a - ref).max()) / float(ref.max() - ref.min())


def _decode(model: LlamaCppModel, prompts: list[list[int]], n: int = 8, **kw: Any
            ) -> tuple[dict[int, list[int]], dict[int, list[np.ndarray]]]:
    """Greedy tokens and the logits rows they were sampled from, each prompt alone in turn
    through one batched decoder (a later prompt may hit what an earlier one stored)."""
    dec = LlamaCppBatchDecoder(model, 2, keep_logits=True, **kw)
    tokens: dict[int, list[int]] = {}
    try:
        for key, ids in enumerate(prompts):
            dec.join(key, ids, _config(model, max_new_tokens=n))
            tokens[key] = []
            while len(tokens[key]) < n:
                for k, token in dec.step().items():
                    assert isinstance(token, int)
                    tokens[k].append(token)
            dec.leave(key)
        return tokens, dec.logits
    finally:
        dec.close()


def test_defaults_and_info(gguf: Path, cached: LlamaCppModel, cold: LlamaCppModel) -> None:
    assert cached.info.extra["prefix_cache_mib"] == 64 and cached.prefix_cache.budget_bytes == 64 * 2**20
    assert cold.info.extra["prefix_cache_mib"] == 0 and not cold.prefix_cache.enabled
    with openllm_hub.load(gguf, device="cpu", threads=1) as m:  # default: sized from the free RAM
        assert isinstance(m, LlamaCppModel)
        assert 0 < m.info.extra["prefix_cache_mib"] <= 4096
    with pytest.raises(openllm_hub.errors.OpenLLMHubError):
        openllm_hub.load(gguf, device="cpu", threads=1, prefix_cache_mib=-1)


def test_conformance_hits_equal_cold(cached: LlamaCppModel, cold: LlamaCppModel) -> None:
    """The conformance kit's check (llama-cpp-python's single path reuses its last prompt's cells
    before it asks the store, so single-path hits are not counted; log-probabilities as in
    test_single_path_hit_equals_cold)."""
    check_prefix_cache_hits_equal_cold(cached, cold, SYSTEM, QUESTIONS, bound=1e-4, single_path_hits=False)


def test_batched_hit_equals_cold(cached: LlamaCppModel, cold: LlamaCppModel) -> None:
    """The second prompt reuses the first one's system prompt: its logits rows equal the cold
    ``Model.logits`` of the same ids, and its greedy tokens the cold model's."""
    prompts = [_prompt(cached, 0), _prompt(cached, 1)]
    shared = next(i for i, (a, b) in enumerate(zip(*prompts)) if a != b)
    assert shared > 2 * cached.prefix_cache.block_tokens
    tokens, logits = _decode(cached, prompts)
    stats = cached.prefix_cache.stats()
    assert stats["hits"] == 1 and stats["tokens_reused"] == shared and stats["entries"] == 2
    for key, ids in enumerate(prompts):
        assert tokens[key] == _cold_tokens(cold, key)
        ref = cold.logits(ids + tokens[key][:-1])[len(ids) - 1:]
        worst = max(_relative(row, r) for row, r in zip(logits[key], ref))
        assert worst <= BOUND, worst


def test_join_with_a_hit_equals_a_cold_join(cached: LlamaCppModel, cold: LlamaCppModel) -> None:
    """A sequence joins a running batch and reuses a stored system prompt: its tokens and its
    neighbours' equal the same batch on the cold model (the conformance kit's check)."""
    check_prefix_cache_join_with_a_hit_equals_cold(cached, cold, _text(3), _text(2))


def test_what_is_stored(cached: LlamaCppModel) -> None:
    """A stream closed before its prompt is read stores nothing; a prompt shorter than one block
    is not stored; a prompt read in full is (the conformance kit's check)."""
    check_prefix_cache_what_is_stored(cached, _text(3))


def test_single_path_hit_equals_cold(cached: LlamaCppModel, cold: LlamaCppModel) -> None:
    """On the single path, llama-cpp-python keeps only the last prompt's cells: after an unrelated
    prompt, the store gives the system prompt back. Logprobs (raw logits) and tokens as cold."""
    params = {"max_new_tokens": 8, "temperature": 0.0, "logprobs": True}
    cached.generate(_text(0), **params)
    cached.generate(_text(2, system="Something else entirely, not the same system prompt at all."), **params)
    hits = cached.prefix_cache.stats()["hits"]
    got = cached.generate(_text(1), **params)
    assert cached.prefix_cache.stats()["hits"] == hits + 1
    want = cold.generate(_text(1), **params)
    assert got.token_ids == want.token_ids
    assert got.logprobs is not None and want.logprobs is not None
    assert max(abs(a.logprob - b.logprob) for a, b in zip(got.logprobs, want.logprobs)) < 1e-4


def test_tiny_budget_evicts_and_stays_correct(cached: LlamaCppModel, cold: LlamaCppModel) -> None:
    """A budget that holds one prompt's cells: each new system prompt evicts the last, results stay cold's."""
    systems = [SYSTEM, SYSTEM.replace("Rule", "Law"), SYSTEM.replace("politely", "kindly")]
    cases = [(i % 4, systems[i % 3]) for i in range(6)]
    prompts = [_prompt(cached, i, system=s) for i, s in cases]
    one = _decode(cached, prompts[:1])  # measure one entry, then start over with room for it only
    size = cached.prefix_cache.nbytes
    cached.prefix_cache = PrefixCache(int(size * 1.5))
    tokens, _ = _decode(cached, prompts)
    stats = cached.prefix_cache.stats()
    assert stats["evictions"] >= 4 and stats["entries"] == 1 and stats["bytes"] <= stats["budget_bytes"]
    assert tokens[0] == one[0][0]
    for key, (i, system) in enumerate(cases):
        assert tokens[key] == _cold_tokens(cold, i, system)
    cached.prefix_cache = PrefixCache(100)  # smaller than any entry: nothing is stored, all still right
    tokens, _ = _decode(cached, prompts[:2])
    assert len(cached.prefix_cache) == 0
    assert tokens[1] == _cold_tokens(cold, *cases[1])


def test_cancelled_sequence_never_poisons(cached: LlamaCppModel, cold: LlamaCppModel) -> None:
    """A sequence cancelled while its prompt is read in chunks stores nothing; one that runs next
    with the same prompt reads it cold and gives cold's tokens (and stores it)."""
    ids = _prompt(cached, 0)
    dec = LlamaCppBatchDecoder(cached, 2, step_tokens=16)
    try:
        dec.join(0, ids, _config(cached, max_new_tokens=4))
        for _ in range(3):
            assert dec.step() == {}  # still reading its prompt
        dec.leave(0)
        assert len(cached.prefix_cache) == 0 and not cached.prefix_cache.covers(ids)
        dec.join(1, ids, _config(cached, max_new_tokens=4))
        got: list[int] = []
        while len(got) < 4:
            got += [t for t in dec.step().values() if isinstance(t, int)]
    finally:
        dec.close()
    assert got == _cold_tokens(cold, 0, n=4)
    assert cached.prefix_cache.covers(ids) and cached.prefix_cache.stats()["hits"] == 0


def test_server_answers_equal_with_cache_on_and_off(cached: LlamaCppModel, cold: LlamaCppModel) -> None:
    """Two requests sharing a long system prompt through /v1/chat/completions (two slots): the
    same answers with the cache on and off, and the second request hit the cache."""
    check_prefix_cache_server_answers_equal(cached, cold, SYSTEM, QUESTIONS, max_tokens=12, chat_template="llama-2")
