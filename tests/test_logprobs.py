"""Logprobs of generated tokens: equal to the log-softmax of ``Model.logits()`` at the same positions.

The choice checked here (see :mod:`openllm_hub.core.logprobs`): a token's logprob is the
log-softmax of the model's raw logits at its position, before temperature, top-k/top-p and
the repeat penalty. So for every generated token ``i`` the reference is row
``len(prompt) - 1 + i`` of ``Model.logits(prompt + generated)``, computed in one full pass.

Bounds (absolute, in nats): the bigram model's generation step returns the very row
``logits()`` does, so its logprobs are exact (1e-9). On the tiny LLaMA in fp32 the scoring
is exact too, but the engines compute the generation step's row differently from the one
full pass ``logits()`` runs: llama.cpp (f32 GGUF, f32 KV cache) evaluates one token at a time
against its cache, with other matrix kernels than a batch; transformers extends a
``DynamicCache``. Over 12 generated tokens the two rows differ by up to 1.1e-5 (llama.cpp)
and 2.8e-5 (transformers) as measured here, so both are held to 5e-5; after a 1,024-token
prompt: 4.7e-6 and 9.1e-6.

The reference is computed independently of the SDK's own scoring (``core.logprobs``):
torch's ``log_softmax`` in float64 of the ``Model.logits()`` rows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from wrapped_model import WrappedModel

import openllm_hub
from openllm_hub.core.config import GenerationConfig
from openllm_hub.core.logprobs import MAX_TOP_LOGPROBS, TokenLogprob
from openllm_hub.core.model import Completion, Model
from openllm_hub.errors import InvalidParameterError

PROMPT = "Once upon a time"


@pytest.fixture(scope="module", params=["bigram", "llama.cpp", "transformers"])
def engine(request: pytest.FixtureRequest, tiny_llama: tuple[Path, Path]) -> Iterator[tuple[Model, float]]:
    if request.param == "bigram":
        from openllm_hub_bigram import BUILTIN_MODEL

        m, bound = openllm_hub.load(BUILTIN_MODEL, device="cpu"), 1e-9
    elif request.param == "llama.cpp":
        m, bound = openllm_hub.load(tiny_llama[1], device="cpu", threads=1, kv_cache_type="f32"), 5e-5
    else:
        m, bound = openllm_hub.load(tiny_llama[0], device="cpu", threads=1), 5e-5
    with m:
        yield m, bound


def reference(model: Model, prompt_ids: Sequence[int], done: Completion) -> npt.NDArray[np.float64]:
    """log_softmax of Model.logits() at the positions that produced each generated token, computed
    independently of the SDK's scoring (``core.logprobs``): torch's log_softmax in float64."""
    import torch

    rows = model.logits([*prompt_ids, *done.token_ids])[len(prompt_ids) - 1 : len(prompt_ids) - 1 + len(done.token_ids)]
    out: npt.NDArray[np.float64] = torch.log_softmax(torch.from_numpy(np.asarray(rows, dtype=np.float64)), -1).numpy()
    return out


@pytest.mark.parametrize("params", [{"temperature": 0.0}, {"temperature": 0.9, "top_p": 0.8, "seed": 5},
                                    {"temperature": 1.3, "top_k": 5, "repeat_penalty": 1.5, "seed": 11}])
def test_logprobs_equal_log_softmax_of_logits(engine: tuple[Model, float], params: dict[str, Any]) -> None:
    model, bound = engine
    done = model.generate(PROMPT, max_new_tokens=12, logprobs=True, top_logprobs=5, **params)
    assert done.logprobs is not None and len(done.logprobs) == len(done.token_ids) > 0
    ref = reference(model, model.tokenize(PROMPT), done)
    for i, (tid, lp) in enumerate(zip(done.token_ids, done.logprobs, strict=True)):
        assert lp.token_id == tid
        assert abs(lp.logprob - ref[i, tid]) <= bound
        # the 5 most likely tokens of the reference row, most likely first (ties: lower id first)
        best = np.sort(ref[i])[::-1][:5]
        assert len(lp.top) == 5 and np.allclose([t.logprob for t in lp.top], best, rtol=0, atol=bound)
        assert all(a.logprob > b.logprob or (a.logprob == b.logprob and a.token_id < b.token_id)
                   for a, b in zip(lp.top, lp.top[1:]))
        for t in lp.top:
            assert abs(t.logprob - ref[i, t.token_id]) <= bound
            assert t.bytes == model._token_bytes(t.token_id)
        assert lp.bytes == model._token_bytes(tid)
        assert lp.token == lp.bytes.decode("utf-8", errors="replace")


def test_logprobs_after_a_long_prompt(engine: tuple[Model, float]) -> None:
    """A >= 1,024-token prompt (positions far out, where rotary and cache bugs show): whole and
    streamed, every generated token's logprob and its top 3 within the engine's bound of the
    reference at its position."""
    from openllm_hub.testing import long_prompt

    model, bound = engine
    prompt = long_prompt(model)
    ids = model.tokenize(prompt)
    assert len(ids) >= 1024
    done = model.generate(prompt, max_new_tokens=8, temperature=0.0, repeat_penalty=1.0, logprobs=True,
                          top_logprobs=3)
    streamed = [lp for c in model.stream(prompt, max_new_tokens=8, temperature=0.0, repeat_penalty=1.0,
                                         logprobs=True, top_logprobs=3) for lp in c.logprobs or ()]
    assert done.logprobs is not None and len(done.logprobs) == len(done.token_ids) > 0
    # the stream gives the same tokens; llama.cpp reuses the prompt's cached cells from the first
    # call, read in other pieces, so its numbers may differ in the last bits: both against the reference
    assert [lp.token_id for lp in streamed] == list(done.token_ids)
    ref = reference(model, ids, done)
    for scores in (done.logprobs, streamed):
        for i, lp in enumerate(scores):
            assert abs(lp.logprob - ref[i, lp.token_id]) <= bound
            assert np.allclose([t.logprob for t in lp.top], np.sort(ref[i])[::-1][:3], rtol=0, atol=bound)


def test_asking_for_logprobs_changes_no_token(engine: tuple[Model, float]) -> None:
    model, _ = engine
    plain = model.generate(PROMPT, max_new_tokens=16, temperature=0.8, seed=3)
    scored = model.generate(PROMPT, max_new_tokens=16, temperature=0.8, seed=3, logprobs=True)
    assert scored.token_ids == plain.token_ids and scored.text == plain.text
    assert all(type(t) is int for t in scored.token_ids)  # plain ids, the scores are in .logprobs
    assert plain.logprobs is None
    assert scored.logprobs is not None and all(lp.top == () for lp in scored.logprobs)


def test_stream_chunks_carry_their_tokens_logprobs(engine: tuple[Model, float]) -> None:
    model, _ = engine
    done = model.generate(PROMPT, max_new_tokens=20, temperature=0.7, seed=9, top_logprobs=2)
    assert done.logprobs is not None  # top_logprobs alone implies logprobs
    ids: list[int] = []
    scores: list[TokenLogprob] = []
    for chunk in model.stream(PROMPT, max_new_tokens=20, temperature=0.7, seed=9, top_logprobs=2):
        assert chunk.logprobs is not None and len(chunk.logprobs) == len(chunk.token_ids)
        ids.extend(chunk.token_ids)
        scores.extend(chunk.logprobs)
    assert tuple(ids) == done.token_ids and tuple(scores) == done.logprobs


def test_chat_logprobs_match_logits_of_the_chat_prompt(engine: tuple[Model, float]) -> None:
    model, bound = engine
    messages = [{"role": "user", "content": "Tell me a story."}]
    done = model.chat(messages, max_new_tokens=8, temperature=0.0, repeat_penalty=1.0, logprobs=True,
                      top_logprobs=1)
    ref = reference(model, model.chat_prompt_ids(messages), done)
    assert done.logprobs is not None
    for i, lp in enumerate(done.logprobs):
        assert abs(lp.logprob - ref[i, lp.token_id]) <= bound
        # greedy without a penalty: the chosen token is the most likely one
        assert lp.top[0].token_id == lp.token_id and abs(lp.logprob - ref[i].max()) <= bound


def test_batch_gives_each_sequence_its_own_logprobs(engine: tuple[Model, float]) -> None:
    model, _ = engine
    # an engine that decodes the batch in one forward pass (llama.cpp) runs multi-row kernels whose
    # sums may differ from the one-row path in the last bits (measured 4.7e-7 here); engines that
    # interleave single-sequence steps compute exactly the same numbers
    tol = 1e-5 if model.batching == "batched" else 1e-9
    prompts = [PROMPT, "The little dog", "A"]
    params = [{"seed": 1}, {"seed": 2, "logprobs": True, "top_logprobs": 3}, {"seed": 3, "logprobs": True}]
    batch = model.generate_batch(prompts, params, slots=2, max_new_tokens=10, temperature=0.9)
    for prompt, p, got in zip(prompts, params, batch, strict=True):
        alone = model.generate(prompt, max_new_tokens=10, temperature=0.9, **p)
        assert got.token_ids == alone.token_ids
        if got.logprobs is None:
            assert alone.logprobs is None
            continue
        assert alone.logprobs is not None and len(got.logprobs) == len(alone.logprobs)
        for a, b in zip(got.logprobs, alone.logprobs, strict=True):
            assert a.token_id == b.token_id and [t.token_id for t in a.top] == [t.token_id for t in b.top]
            assert abs(a.logprob - b.logprob) <= tol


def test_stop_strings_and_max_new_tokens_keep_one_logprob_per_id(engine: tuple[Model, float]) -> None:
    model, _ = engine
    free = model.generate(PROMPT, max_new_tokens=12, temperature=0.0)
    stop = free.text[3:6] if len(free.text) >= 6 else None
    done = model.generate(PROMPT, max_new_tokens=12, temperature=0.0, logprobs=True,
                          **({"stop": [stop]} if stop else {}))
    assert done.logprobs is not None and [lp.token_id for lp in done.logprobs] == list(done.token_ids)


@pytest.mark.parametrize(("params", "field"), [({"top_logprobs": MAX_TOP_LOGPROBS + 1}, "top_logprobs"),
                                               ({"top_logprobs": -1}, "top_logprobs"),
                                               ({"logprobs": "maybe"}, "logprobs")])
def test_bad_logprob_parameters_name_the_field(params: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidParameterError, match=field):
        GenerationConfig.build(**params)
    assert GenerationConfig.build(top_logprobs=MAX_TOP_LOGPROBS).top_logprobs == MAX_TOP_LOGPROBS


class UnscoredModel(WrappedModel):
    """The bigram model with its token stream reduced to plain ids: an engine whose own
    generation loop does not score tokens."""

    def _token_stream(self, prompt_ids: list[int], config: GenerationConfig) -> Iterator[int]:
        return (int(t) for t in self.inner._token_stream(prompt_ids, config))


def test_an_engine_without_scores_refuses_logprobs_clearly(bigram: Model) -> None:
    model = UnscoredModel(bigram)
    assert model.generate(PROMPT, max_new_tokens=4, seed=1).logprobs is None
    with pytest.raises(InvalidParameterError, match="log-probabilities"):
        model.generate(PROMPT, max_new_tokens=4, seed=1, logprobs=True)
    # in a batch only that sequence fails, with the same error
    batch = model.new_batch()
    key = batch.add(model.tokenize(PROMPT), GenerationConfig.build(logprobs=True, seed=1))
    events = batch.step()
    assert len(events) == 1 and events[0][0] == key and isinstance(events[0][1], InvalidParameterError)
    batch.close()
