"""The HF LLaMA prefix cache (engines.torch_prefix): prompts sharing a long prefix reuse its keys and values.

A prompt that starts with a stored prompt's ids (a shared system prompt of more than 1,024
tokens, where a rotary or position mistake would show) must give what it gives cold: logits
within a stated bound and the same greedy tokens, on the single path and in the batched
decoder (alone, or joining a running batch), for a prompt that is a prefix of a stored one,
and when a small budget evicts entries. fp32 tiny model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from openllm_hub_llama.engine_hf import HFModel

import openllm_hub
from openllm_hub.testing import (
    PREFIX_QUESTIONS,
    check_prefix_cache_batched_hits_equal_cold,
    check_prefix_cache_hits_equal_cold,
    check_prefix_cache_join_with_a_hit_equals_cold,
    check_prefix_cache_server_answers_equal,
    check_prefix_cache_what_is_stored,
    system_prompt,
)

#: A hit's logits against the cold run's, relative to the row's range. Attention is causal and
#: rotary positions absolute, so the reused keys and values are what the cold run computes for
#: those positions, but they were computed within another prompt's 512-id chunks, and the rest of
#: the prompt is read in other chunks than cold (from the end of the shared part): torch's matrix
#: products over another number of rows may sum in another order. A few float32 roundings of the
#: row's range: measured 3.6e-7 (1,1xx-id prompts on this model).
BOUND = 2e-6
#: The same against ``Model.logits`` (one forward over all ids, no cache), from which the cold
#: cached path itself differs by ~1.4e-6 on this model (test_batch_hf.py); measured 1.4e-6.
FULL_BOUND = 1e-5
#: The same for log-probabilities (absolute): a few times BOUND x the logits' range (~20 on this model).
LOGPROB_BOUND = 1e-4

SYSTEM = system_prompt(72)
QUESTIONS = list(PREFIX_QUESTIONS)


@pytest.fixture(scope="module")
def folder(tiny_hf_factory: Callable[..., Path]) -> Path:
    return tiny_hf_factory(num_kv_heads=2)


@pytest.fixture(scope="module")
def cold(folder: Path) -> Iterator[HFModel]:
    with openllm_hub.load(folder, device="cpu", threads=1, prefix_cache_mib=0) as m:
        assert isinstance(m, HFModel)
        yield m


@pytest.fixture
def cached(folder: Path) -> Iterator[HFModel]:
    with openllm_hub.load(folder, device="cpu", threads=1, prefix_cache_mib=64) as m:
        assert isinstance(m, HFModel)
        yield m


def _text(i: int) -> str:
    return f"{SYSTEM}\nQ: {QUESTIONS[i]}\nA:"


def test_long_prompts() -> None:
    import sentencepiece as spm
    from openllm_hub_llama.tiny import fixture_tokenizer

    sp = spm.SentencePieceProcessor(model_file=str(fixture_tokenizer()))
    assert len(sp.encode(SYSTEM)) >= 1024  # past the first two 512-id chunks: rotary positions up to ~1,100


def test_defaults_and_info(folder: Path, cached: HFModel, cold: HFModel) -> None:
    assert cached.info.extra["prefix_cache_mib"] == 64 and cached.prefix_cache.budget_bytes == 64 * 2**20
    assert cold.info.extra["prefix_cache_mib"] == 0 and not cold.prefix_cache.enabled
    cfg = cached.torch_model.config
    assert cached.info.extra["kv_bytes_per_token"] == 2 * cfg.num_hidden_layers * 2 * (cfg.hidden_size // 4) * 4
    with openllm_hub.load(folder, device="cpu", threads=1) as m:  # default: sized from the free RAM, as llama.cpp's
        assert 0 < m.info.extra["prefix_cache_mib"] <= 4096
    with pytest.raises(openllm_hub.errors.OpenLLMHubError):
        openllm_hub.load(folder, device="cpu", threads=1, prefix_cache_mib=-1)


def test_conformance_hits_equal_cold(cached: HFModel, cold: HFModel) -> None:
    check_prefix_cache_hits_equal_cold(cached, cold, SYSTEM, QUESTIONS, bound=LOGPROB_BOUND)


def test_batched_hit_logits_equal_cold(cached: HFModel, cold: HFModel) -> None:
    """The second prompt reuses the first one's system prompt (> 1,024 ids): every logits row
    it samples from equals the cold decoder's and the cold ``Model.logits``' within BOUND, and its
    greedy tokens are the cold ones; a third prompt, a prefix of the first, reuses all but its last id."""
    check_prefix_cache_batched_hits_equal_cold(cached, cold, _text(0), _text(1), bound=BOUND, full_bound=FULL_BOUND,
                                               cut=4)


def test_join_with_a_hit_equals_a_cold_join(cached: HFModel, cold: HFModel) -> None:
    """A sequence joins a running batch (two short prompts decoding) and reuses a stored system
    prompt: its tokens and those of its neighbours equal the same batch on the cold model."""
    check_prefix_cache_join_with_a_hit_equals_cold(cached, cold, _text(4), _text(2))


def test_what_is_stored(cached: HFModel) -> None:
    """A stream closed before its prompt is read stores nothing; a prompt shorter than one block
    is not stored; a prompt read in full is."""
    check_prefix_cache_what_is_stored(cached, _text(3))


def test_disabled_cache_changes_nothing(cold: HFModel) -> None:
    a = cold.generate(_text(0), max_new_tokens=4, temperature=0.0)
    b = cold.generate(_text(0), max_new_tokens=4, temperature=0.0)
    assert a.token_ids == b.token_ids and len(cold.prefix_cache) == 0
    assert cold.prefix_cache.stats()["hits"] == cold.prefix_cache.stats()["misses"] == 0


def test_server_answers_equal_with_cache_on_and_off(cached: HFModel, cold: HFModel) -> None:
    """Two requests sharing the long system prompt through /v1/chat/completions (two slots): the
    same answers with the cache on and off, and the second request hit the cache."""
    check_prefix_cache_server_answers_equal(cached, cold, SYSTEM, QUESTIONS, max_tokens=6, chat_template="llama-2")
