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

import numpy as np
import pytest
from openllm_hub_llama.engine_hf import HFBatchDecoder, HFModel

import openllm_hub
from openllm_hub.core.config import GenerationConfig
from openllm_hub.testing import check_prefix_cache_hits_equal_cold

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

SYSTEM = "You are a careful assistant. " + " ".join(
    f"Rule {i}: answer questions about the number {i * 7} politely and briefly." for i in range(72))
QUESTIONS = ["What is the capital of France?", "Tell me a story about a dog.", "Why is the sky blue?",
             "Count to five.", "Name a colour."]


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


def _prompt(model: HFModel, i: int) -> list[int]:
    return model.tokenize(f"{SYSTEM}\nQ: {QUESTIONS[i]}\nA:")


def _config(model: HFModel, n: int = 8) -> GenerationConfig:
    return GenerationConfig.build(model.generation_defaults, max_new_tokens=n, temperature=0.0).with_seed()


def _relative(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(a - ref).max()) / float(ref.max() - ref.min())


def _alone(model: HFModel, prompts: list[list[int]], n: int = 6) -> tuple[list[list[int]], list[list[np.ndarray]]]:
    """Each prompt alone in turn through one batched decoder: greedy tokens and the logits rows
    they were sampled from (a later prompt may reuse what an earlier one stored)."""
    dec = HFBatchDecoder(model, keep_logits=True)
    tokens: list[list[int]] = []
    try:
        for key, ids in enumerate(prompts):
            dec.join(key, ids, _config(model, n))
            got: list[int] = []
            while len(got) < n:
                got += [t for t in dec.step().values() if isinstance(t, int)]
            dec.leave(key)
            tokens.append(got)
        return tokens, [dec.logits[k] for k in range(len(prompts))]
    finally:
        dec.close()


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
    prompts = [_prompt(cached, 0), _prompt(cached, 1), _prompt(cached, 0)[:-4]]
    shared = next(i for i, (a, b) in enumerate(zip(*prompts[:2])) if a != b)
    assert shared >= 1024
    tokens, rows = _alone(cached, prompts)
    stats = cached.prefix_cache.stats()
    assert stats["hits"] == 2 and stats["tokens_reused"] == shared + len(prompts[2]) - 1, stats
    assert stats["entries"] == 2, stats  # the third prompt was held already (a prefix of the first)
    cold_tokens, cold_rows = _alone(cold, prompts)
    assert tokens == cold_tokens
    np.testing.assert_array_equal(rows[0][0], cold_rows[0][0])  # no hit: the very computation
    worst = worst_full = 0.0
    for key in (1, 2):
        full = cold.logits(prompts[key] + tokens[key][:-1])[len(prompts[key]) - 1:]
        for row, ref, ref_full in zip(rows[key], cold_rows[key], full):
            worst = max(worst, _relative(row, ref))
            worst_full = max(worst_full, _relative(row, ref_full))
    assert worst <= BOUND, f"a hit's logits differ from the cold run by {worst:.3g} of the range"
    assert worst_full <= FULL_BOUND, f"a hit's logits differ from Model.logits by {worst_full:.3g} of the range"


def test_join_with_a_hit_equals_a_cold_join(cached: HFModel, cold: HFModel) -> None:
    """A sequence joins a running batch (two short prompts decoding) and reuses a stored system
    prompt: its tokens and those of its neighbours equal the same batch on the cold model."""
    def run(model: HFModel) -> dict[int, list[int]]:
        model.generate(f"{SYSTEM}\nQ: {QUESTIONS[4]}\nA:", max_new_tokens=1, temperature=0.0)  # stores the system
        dec = HFBatchDecoder(model)
        got: dict[int, list[int]] = {0: [], 1: [], 2: []}
        try:
            dec.join(0, model.tokenize("Once upon a time"), _config(model, 10))
            dec.join(1, model.tokenize("The little dog ran to the big house and"), _config(model, 10))
            for step in range(10):
                if step == 3:
                    dec.join(2, _prompt(model, 2), _config(model, 10))
                for key, token in dec.step().items():
                    assert isinstance(token, int)
                    got[key].append(token)
        finally:
            dec.close()
        return got

    hits = cached.prefix_cache.stats()["hits"]
    assert run(cached) == run(cold)
    assert cached.prefix_cache.stats()["hits"] == hits + 1


def test_what_is_stored(cached: HFModel) -> None:
    """A stream closed before its prompt is read stores nothing; a prompt shorter than one block
    is not stored; a prompt read in full is."""
    ids = _prompt(cached, 3)
    stream = cached._token_stream(ids, _config(cached))
    stream.close()  # never started
    assert len(cached.prefix_cache) == 0
    cached.generate("Hello there", max_new_tokens=2, temperature=0.0)
    assert len(cached.prefix_cache) == 0
    cached.generate(f"{SYSTEM}\nQ: {QUESTIONS[3]}\nA:", max_new_tokens=2, temperature=0.0)
    assert cached.prefix_cache.covers(ids)


def test_disabled_cache_changes_nothing(cold: HFModel) -> None:
    a = cold.generate(f"{SYSTEM}\nQ: {QUESTIONS[0]}\nA:", max_new_tokens=4, temperature=0.0)
    b = cold.generate(f"{SYSTEM}\nQ: {QUESTIONS[0]}\nA:", max_new_tokens=4, temperature=0.0)
    assert a.token_ids == b.token_ids and len(cold.prefix_cache) == 0
    assert cold.prefix_cache.stats()["hits"] == cold.prefix_cache.stats()["misses"] == 0


def test_server_answers_equal_with_cache_on_and_off(cached: HFModel, cold: HFModel) -> None:
    """Two requests sharing the long system prompt through /v1/chat/completions (two slots): the
    same answers with the cache on and off, and the second request hit the cache."""
    from fastapi.testclient import TestClient

    from openllm_hub.server.app import create_app

    def answers(model: HFModel) -> list[str]:
        out = []
        with TestClient(create_app(model, parallel=2)) as client:
            for q in QUESTIONS[:2]:
                r = client.post("/v1/chat/completions", json={
                    "model": "m", "max_tokens": 6, "temperature": 0, "chat_template": "llama-2",
                    "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}]})
                assert r.status_code == 200, r.text
                out.append(r.json()["choices"][0]["message"]["content"])
        return out

    assert answers(cached) == answers(cold)
    assert cached.prefix_cache.stats()["hits"] >= 1
