"""The ChatGLM batched decoder within a KV memory budget (engines.torch_batch.plan_rows).

With ``batch_kv_bytes`` set (by default half the free memory), slots hold at most
``slot_tokens`` tokens (the ragged cache never grows past them) and at most ``max_rows``
sequences are rows at once, the others waiting; results stay those of single runs. fp32 tiny
ChatGLM2 with a 2,048-token context.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from openllm_hub_chatglm.engine_torch import ChatGLMBatchDecoder, ChatGLMModel

import openllm_hub
from openllm_hub.core.config import GenerationConfig
from openllm_hub.engines.torch_batch import MIN_SLOT_TOKENS

PROMPTS = ["Once upon a time", "Hello", "The little dog ran to the big house and"]


@pytest.fixture(scope="module")
def model(make_ckpt: Callable[..., Path]) -> Iterator[ChatGLMModel]:
    with openllm_hub.load(make_ckpt("chatglm2", seed=5, seq_length=2048), device="cpu", prefix_cache_mib=0) as m:
        assert isinstance(m, ChatGLMModel)
        yield m


def test_default_budget_holds_full_context_slots(model: ChatGLMModel) -> None:
    model.batch_kv_bytes = None
    dec = ChatGLMBatchDecoder(model, slots=4)
    assert dec.slot_tokens == model.context_length == 2048
    assert dec.max_rows is not None and dec.max_rows >= 4


def test_a_small_budget_bounds_slots_rows_and_the_cache(model: ChatGLMModel) -> None:
    """2 x 600 tokens: 2 slots of 600 (the cache's limit); 3 sequences at once get slots of 512
    and 2 rows, the third waiting; every sequence gives its single run."""
    per = model.info.extra["kv_bytes_per_token"]
    model.batch_kv_bytes = 2 * 600 * per
    try:
        with model.new_batch(2) as batch:
            assert batch.slot_tokens == 600
        dec = ChatGLMBatchDecoder(model, slots=3)
        assert (dec.max_rows, dec.slot_tokens) == (2, MIN_SLOT_TOKENS)
        assert dec._cache is not None and dec._cache.limit == MIN_SLOT_TOKENS
        params = {"max_new_tokens": 10, "temperature": 0.0, "repeat_penalty": 1.0}
        single = [model.generate(p, **params) for p in PROMPTS]
        config = GenerationConfig.build(model.generation_defaults, **params).with_seed()
        got: dict[int, list[int]] = {0: [], 1: [], 2: []}
        most = 0
        try:
            for key, p in enumerate(PROMPTS):
                dec.join(key, model.tokenize(p), config)
            for _ in range(40):
                for key, token in dec.step().items():
                    assert isinstance(token, int)
                    got[key].append(token)
                most = max(most, dec.rows)
                assert dec._cache.capacity(0) <= MIN_SLOT_TOKENS
                for key in [k for k, t in got.items() if len(t) == 10]:
                    dec.leave(key)
                    got[key].append(-1)
        finally:
            dec.close()
        assert most == 2
        assert [t[:-1] for t in got.values()] == [list(a.token_ids[:10]) for a in single]
    finally:
        model.batch_kv_bytes = None
