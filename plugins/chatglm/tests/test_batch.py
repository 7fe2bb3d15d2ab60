"""Several ChatGLM sequences in one forward pass (engine_torch.ChatGLMBatchDecoder), fp32 tiny models
of each version (ChatGLM-6B with its 2D positions, ChatGLM2, ChatGLM3).

Each sequence of a batch must give what it gives alone: logits within a stated bound, greedy
tokens exactly (a batch of 8 prompts of different lengths, sequences joining and cancelled
mid-batch), logprobs as alone, and the conformance kit's batch checks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from openllm_hub_chatglm.engine_torch import ChatGLMBatchDecoder, ChatGLMModel

import openllm_hub
from openllm_hub.core.model import Model
from openllm_hub.testing import (
    BATCH_PROMPTS,
    check_batch_equals_single,
    check_batch_join_and_cancel,
    check_batch_logprobs_match_single_runs,
    check_batched_logits_match_alone,
    check_fallback_equals_single_runs,
    check_greedy_batch_matches_single_runs,
    check_joins_and_cancels_leave_the_others_unchanged,
    check_long_prompt_in_batch,
    check_sampled_batch_matches_single_runs,
)

#: Logits of a row decoded in a batch against the same row of the single run, relative to the
#: row's range. Prompt rows are read alone (exactly equal); decoded rows come from matrix
#: products over several rows and a padding-masked attention over the ragged cache, which sum
#: in another order. Measured on these fp32 models (v1, v2, v3): 2.6e-7, 2.7e-7, 3.2e-7 against
#: the single run, at most 3.0e-7 against ``Model.logits`` (f32 rounding is 6e-8); with a
#: >= 1,024-token prompt in the batch: 2.5e-7, 3.2e-7, 3.1e-7 and at most 3.0e-7.
BOUND = 1e-6



#: The conftest's ``v1_dir``, ``v2_dir``, ``v3_dir`` checkpoints (same variants and seeds, so the same
#: weights) with a 2,048-token context instead of 512, so a >= 1,024-token prompt fits.
CHECKPOINTS = {"v1_dir": ("chatglm", {"seed": 1, "shards": 2, "fmt": "bin"}),
               "v2_dir": ("chatglm2", {"seed": 2, "shards": 3}),
               "v3_dir": ("chatglm3", {"seed": 3, "shards": 2, "fmt": "bin"})}


@pytest.fixture(scope="module", params=list(CHECKPOINTS))
def model(request: pytest.FixtureRequest, make_ckpt: Callable[..., Path]) -> Iterator[ChatGLMModel]:
    variant, kw = CHECKPOINTS[request.param]
    with openllm_hub.load(make_ckpt(variant, seq_length=2048, **kw), device="cpu") as m:
        assert isinstance(m, ChatGLMModel) and m.context_length == 2048
        yield m


def _greedy(n: int = 12, seed: int = 0) -> dict[str, Any]:
    return {"max_new_tokens": n, "temperature": 0.0, "seed": seed, "repeat_penalty": 1.0}


def test_model_batches(model: ChatGLMModel) -> None:
    assert model.batching == "batched"
    with model.new_batch(3) as batch:
        assert isinstance(batch.decoder, ChatGLMBatchDecoder)
        assert batch.slot_tokens == model.context_length


def test_the_interleaving_fallback_still_equals_single_runs(v2_dir: Path) -> None:
    """The same model without its batched decoder: the core's interleaving of generators."""
    with openllm_hub.load(v2_dir, device="cpu") as m:
        check_fallback_equals_single_runs(m, BATCH_PROMPTS[:3], "interleaved")


def test_logits_in_a_batch_equal_alone(model: ChatGLMModel) -> None:
    """Every row a sequence samples from in the batch against the same sequence alone and
    against ``Model.logits``; prompts of different lengths, one joining late, one leaving early."""
    check_batched_logits_match_alone(model, ChatGLMBatchDecoder, BATCH_PROMPTS, _greedy(), bound=BOUND,
                                     full_bound=BOUND)


def test_a_long_prompt_in_a_batch_of_short_ones(model: ChatGLMModel) -> None:
    """A >= 1,024-token prompt joining a batch of short ones (rotary positions far out; on
    ChatGLM-6B its 2D positions: the [gMASK] position ~1,000 for the long row, ~10 for its
    neighbours): greedy tokens and every logits row as alone, within the same bound."""
    check_long_prompt_in_batch(model, BATCH_PROMPTS, _greedy(), decoder=ChatGLMBatchDecoder, bound=BOUND,
                               full_bound=BOUND)


def test_greedy_batch_of_8_equals_single_runs(model: Model) -> None:
    check_greedy_batch_matches_single_runs(model, BATCH_PROMPTS, _greedy(), slots=(None, 3))


def test_sampled_batch_equals_single_runs(model: Model) -> None:
    """Same seed, same core Sampler: on these fp32 models the batch's last-bit differences move no draw."""
    check_sampled_batch_matches_single_runs(model, BATCH_PROMPTS)


def test_join_and_cancel_mid_batch_leave_the_others_unchanged(model: Model) -> None:
    check_joins_and_cancels_leave_the_others_unchanged(model, BATCH_PROMPTS, _greedy())


def test_logprobs_in_a_batch_equal_alone(model: Model) -> None:
    """Same tokens and alternatives; log-probabilities within the logits' bound (1e-4 absolute)."""
    check_batch_logprobs_match_single_runs(model, BATCH_PROMPTS[:4], _greedy(), atol=1e-4)


def test_conformance_batch_checks(model: Model) -> None:
    check_batch_equals_single(model, BATCH_PROMPTS[:4])
    check_batch_join_and_cancel(model, BATCH_PROMPTS[:4])


def test_slot_full_ends_a_sequence_as_alone(v2_dir: Path) -> None:
    """A sequence whose history fills the context ends where the single run ends."""
    with openllm_hub.load(v2_dir, device="cpu", context_length=80) as m:
        prompts = [BATCH_PROMPTS[4], BATCH_PROMPTS[0]]
        single = [m.generate(p, max_new_tokens=100, temperature=0.0) for p in prompts]
        assert any(len(m.tokenize(p)) + len(a.token_ids) == 80 for p, a in zip(prompts, single))
        batch = m.generate_batch(prompts, max_new_tokens=100, temperature=0.0)
        assert [b.token_ids for b in batch] == [a.token_ids for a in single]
        assert [b.finish_reason for b in batch] == [a.finish_reason for a in single]


def test_int4_model_batches_as_alone(v2_dir: Path) -> None:
    with openllm_hub.load(v2_dir, device="cpu", quantize="int4") as m:
        assert m.batching == "batched"
        single = [m.generate(p, **_greedy(10)) for p in BATCH_PROMPTS[:4]]
        batch = m.generate_batch(BATCH_PROMPTS[:4], **_greedy(10))
        assert [b.token_ids for b in batch] == [a.token_ids for a in single]
