"""The ChatGLM prefix cache (openllm_hub.engines.torch_prefix): ChatGLM2/3 prompts sharing a long prefix reuse it.

ChatGLM2 and ChatGLM3 (causal prompts, absolute rotary positions): a prompt that starts with a
stored prompt's ids (a shared system prompt of more than 1,024 tokens) gives what it gives cold,
logits within a stated bound and the same greedy tokens, on the single path and in the batched
decoder (alone or joining a running batch), for a prompt that is a prefix of a stored one and
under a budget that evicts. ChatGLM-6B (v1) keeps its cache off: its prompt attends both ways up
to the closing ``[gMASK] <sop>``, so a shared prefix's keys and values differ between prompts
(shown below) and could not be reused exactly. fp32 tiny models with a 2,048-token context.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from openllm_hub_chatglm.engine_torch import ChatGLMModel

import openllm_hub
from openllm_hub.testing import (
    PREFIX_QUESTIONS,
    check_prefix_cache_batched_hits_equal_cold,
    check_prefix_cache_hits_equal_cold,
    check_prefix_cache_join_with_a_hit_equals_cold,
    check_prefix_cache_what_is_stored,
    system_prompt,
)

#: A hit's logits against the cold run's, relative to the row's range. The reused keys and values
#: are what the cold run computes for those positions (causal attention, absolute rotary
#: positions), computed within another prompt's 512-id chunks, and the rest is read in other
#: chunks than cold: matrix products over another number of rows may sum in another order, a few
#: float32 roundings (measured on these models: 1.5e-7 against the cold decoder, 2.6e-7 against
#: ``Model.logits``; float32 rounding is 6e-8).
BOUND = 1e-6
#: The same for log-probabilities (absolute), a few times BOUND x the logits' range.
LOGPROB_BOUND = 1e-4

SYSTEM = system_prompt(25)
QUESTIONS = list(PREFIX_QUESTIONS)
LONG = {"seq_length": 2048}


@pytest.fixture(scope="module", params=["chatglm2", "chatglm3"])
def folder(request: pytest.FixtureRequest, make_ckpt: Callable[..., Path]) -> Path:
    return make_ckpt(request.param, seed=5, **LONG)


@pytest.fixture(scope="module")
def cold(folder: Path) -> Iterator[ChatGLMModel]:
    with openllm_hub.load(folder, device="cpu", prefix_cache_mib=0) as m:
        assert isinstance(m, ChatGLMModel)
        yield m


@pytest.fixture
def cached(folder: Path) -> Iterator[ChatGLMModel]:
    with openllm_hub.load(folder, device="cpu", prefix_cache_mib=64) as m:
        assert isinstance(m, ChatGLMModel)
        yield m


def _text(i: int) -> str:
    return f"{SYSTEM}\n{QUESTIONS[i]}"


def _relative(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(a - ref).max()) / float(ref.max() - ref.min())


def test_info(cached: ChatGLMModel, cold: ChatGLMModel) -> None:
    assert cached.info.extra["prefix_cache_mib"] == 64 and cached.prefix_cache.budget_bytes == 64 * 2**20
    assert cold.info.extra["prefix_cache_mib"] == 0 and not cold.prefix_cache.enabled
    s = cached.spec
    assert cached.info.extra["kv_bytes_per_token"] == 2 * s.num_layers * s.num_kv_heads * s.head_dim * 4


def test_conformance_hits_equal_cold(cached: ChatGLMModel, cold: ChatGLMModel) -> None:
    check_prefix_cache_hits_equal_cold(cached, cold, SYSTEM, QUESTIONS, bound=LOGPROB_BOUND)


def test_batched_hit_logits_equal_cold(cached: ChatGLMModel, cold: ChatGLMModel) -> None:
    """A second prompt reuses the first one's system prompt (> 1,024 ids), a third is a prefix
    of the first: every logits row they sample from equals the cold decoder's and ``Model.logits``'
    within BOUND, and their greedy tokens are the cold ones."""
    check_prefix_cache_batched_hits_equal_cold(cached, cold, _text(0), _text(1), bound=BOUND, full_bound=BOUND)


def test_join_with_a_hit_equals_a_cold_join(cached: ChatGLMModel, cold: ChatGLMModel) -> None:
    """A sequence joins a running batch and reuses a stored system prompt: its tokens and its
    neighbours' equal the same batch on the cold model."""
    check_prefix_cache_join_with_a_hit_equals_cold(cached, cold, _text(4), _text(2))


def test_what_is_stored(cached: ChatGLMModel) -> None:
    check_prefix_cache_what_is_stored(cached, _text(3))


def test_chatglm_6b_keeps_its_prefix_cache_off(make_ckpt: Callable[..., Path]) -> None:
    """ChatGLM-6B: its prompt attends both ways up to ``[gMASK] <sop>`` at its end, so two
    prompts sharing their first ids do not share those positions' hidden states (the logits of
    the shared positions differ): nothing can be reused exactly, and nothing is stored or reused
    even when a budget is asked for."""
    with openllm_hub.load(make_ckpt("chatglm", seed=6, **LONG), device="cpu", prefix_cache_mib=64) as m:
        assert isinstance(m, ChatGLMModel)
        assert m.info.extra["prefix_cache_mib"] == 0 and not m.prefix_cache.enabled
        a, b = m.tokenize(_text(0)), m.tokenize(_text(1))
        shared = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
        assert shared > 128
        # the same first ids give other hidden states: position i sees the ids after it in the prompt
        # (measured 5e-4 of the range, hundreds of times the rounding a reuse may bring, BOUND)
        assert _relative(m.logits(a)[:shared], m.logits(b)[:shared]) > 100 * BOUND
        for q in QUESTIONS[:2]:
            m.generate(f"{SYSTEM}\n{q}", max_new_tokens=2, temperature=0.0)
        m.generate_batch([f"{SYSTEM}\n{q}" for q in QUESTIONS[2:4]], max_new_tokens=2, temperature=0.0)
        stats = m.prefix_cache.stats()
        assert stats["entries"] == stats["hits"] == stats["misses"] == 0, stats
