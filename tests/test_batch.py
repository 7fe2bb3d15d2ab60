"""Several sequences sharing one model (openllm_hub.core.batch), on the example plugin's bigram model.

The conformance kit's batch checks (run here and, through ``ModelConformance``, on every
family's tiny models: llama.cpp, HF LLaMA, ChatGLM, RWKV, GLM-130B) compare batches with
single runs; the tests below cover the rest of the contract: input order, per-prompt
parameters, slots, the streaming form, failures and bad input, the three interleaving
modes, and a batched decoder (the bigram table read for every sequence in one numpy
operation) driven through the same :class:`Batch`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from wrapped_model import WrappedModel

import openllm_hub
from openllm_hub.core.batch import Batch, BatchDecoder, StepResult
from openllm_hub.core.config import GenerationConfig
from openllm_hub.core.model import Chunk, Model
from openllm_hub.core.sampling import Sampler
from openllm_hub.errors import InvalidParameterError
from openllm_hub.testing import check_batch_equals_single, check_batch_join_and_cancel

PROMPTS = ["Once upon a time", "Lily", "The little dog ran to the big", "A", "Tom and his mom went"]


@pytest.fixture(scope="module")
def model() -> Iterator[Model]:
    from openllm_hub_bigram import BUILTIN_MODEL

    with openllm_hub.load(Path(BUILTIN_MODEL), device="cpu") as m:
        yield m


class Wrapped(WrappedModel):
    """The bigram model's real engine under another declaration (interleaving mode, faults)."""

    def __init__(self, inner: Model, *, fail_on: str | None = None, fail_after: int = 3) -> None:
        super().__init__(inner)
        self.fail_ids = inner.tokenize(fail_on) if fail_on is not None else None
        self.fail_after = fail_after
        self.order: list[int] = []  # the first prompt id of the sequence of each produced token

    def _token_stream(self, prompt_ids: list[int], config: GenerationConfig) -> Iterator[int]:
        for n, token in enumerate(self.inner._token_stream(prompt_ids, config)):
            if prompt_ids == self.fail_ids and n >= self.fail_after:
                raise RuntimeError("injected fault in one sequence")
            self.order.append(len(prompt_ids))
            yield token


class SerialBigram(Wrapped):
    sequence_interleaving = "serial"


class BatchedBigramDecoder(BatchDecoder):
    """Every sequence's next-token row read from the bigram table in one numpy operation."""

    def __init__(self, model: BatchedBigram) -> None:
        self.model = model
        self.slot_tokens = model.info.context_length
        self.seqs: dict[int, tuple[Sampler, list[int]]] = {}
        self.steps: list[int] = []  # how many sequences each step decoded together

    def join(self, key: int, prompt_ids: list[int], config: GenerationConfig) -> None:
        self.seqs[key] = (Sampler(config), list(prompt_ids))

    def leave(self, key: int) -> None:
        self.seqs.pop(key, None)

    def step(self) -> dict[int, StepResult]:
        keys = list(self.seqs)
        rows = self.model.table[np.asarray([self.seqs[k][1][-1] for k in keys])]  # one "forward pass"
        self.steps.append(len(keys))
        out: dict[int, StepResult] = {}
        for key, row in zip(keys, rows):
            sample, history = self.seqs[key]
            token = sample(row, history)
            history.append(token)
            out[key] = token
        return out


class BatchedBigram(Wrapped):
    def __init__(self, inner: Model) -> None:
        super().__init__(inner)
        self.table: npt.NDArray[np.float32] = inner._table  # type: ignore[attr-defined]
        self.decoders: list[BatchedBigramDecoder] = []

    def _batch_decoder(self, slots: int) -> BatchDecoder | None:
        self.decoders.append(BatchedBigramDecoder(self))
        return self.decoders[-1]


def _params(n: int, greedy: bool = False) -> list[dict[str, Any]]:
    return [{"seed": 10 + i, "max_new_tokens": 8 + 3 * i, **({"temperature": 0.0} if greedy else {})}
            for i in range(n)]


def test_conformance_checks_pass_on_the_bigram_model(model: Model) -> None:
    check_batch_equals_single(model, PROMPTS)
    check_batch_join_and_cancel(model, PROMPTS)


@pytest.mark.parametrize("greedy", [True, False])
def test_generate_batch_equals_single_runs_in_input_order(model: Model, greedy: bool) -> None:
    params = _params(len(PROMPTS), greedy)
    single = [model.generate(p, **kw) for p, kw in zip(PROMPTS, params)]
    for slots in (None, 1, 2):
        batch = model.generate_batch(PROMPTS, params, slots=slots)
        assert [c.token_ids for c in batch] == [c.token_ids for c in single]
        assert [c.text for c in batch] == [c.text for c in single]
        assert [(c.finish_reason, c.usage) for c in batch] == [(c.finish_reason, c.usage) for c in single]


def test_shared_parameters_and_per_prompt_overrides(model: Model) -> None:
    out = model.generate_batch(PROMPTS[:3], [{}, {"seed": 5}, {"max_new_tokens": 3, "stop": "e"}],
                               seed=9, max_new_tokens=12, temperature=0.7)
    want = [model.generate(PROMPTS[0], seed=9, max_new_tokens=12, temperature=0.7),
            model.generate(PROMPTS[1], seed=5, max_new_tokens=12, temperature=0.7),
            model.generate(PROMPTS[2], seed=9, max_new_tokens=3, temperature=0.7, stop="e")]
    assert [c.text for c in out] == [c.text for c in want]
    assert model.generate_batch([]) == []


def test_stream_batch_yields_indexed_chunks_ending_with_usage(model: Model) -> None:
    params = _params(3)
    chunks: dict[int, list[Chunk]] = {}
    for index, chunk in model.stream_batch(PROMPTS[:3], params):
        assert not chunks.get(index) or chunks[index][-1].finish_reason is None, "a chunk after the last one"
        chunks.setdefault(index, []).append(chunk)
    assert sorted(chunks) == [0, 1, 2]
    for i in range(3):
        want = model.generate(PROMPTS[i], **params[i])
        assert "".join(c.text for c in chunks[i]) == want.text
        assert chunks[i][-1].finish_reason == want.finish_reason and chunks[i][-1].usage == want.usage


def test_interleaving_is_round_robin_one_token_each(model: Model) -> None:
    wrapped = Wrapped(model)
    prompts = ["ab", "abcd", "abcdef"]  # ids: BOS + 2, 4, 6 bytes: each sequence known by its length
    out = wrapped.generate_batch(prompts, max_new_tokens=5, temperature=0.0, repeat_penalty=1.0)
    assert all(c.usage.completion_tokens == 5 for c in out), "the check needs answers without an early end"
    assert wrapped.order[:6] == [3, 5, 7, 3, 5, 7]


def test_serial_engines_run_one_sequence_after_the_other(model: Model) -> None:
    serial = SerialBigram(model)
    assert serial.batching == "serial"
    params = _params(3)
    out = serial.generate_batch(PROMPTS[:3], params)
    assert [c.text for c in out] == [model.generate(p, **kw).text for p, kw in zip(PROMPTS[:3], params)]
    lengths = [len(serial.tokenize(p)) for p in PROMPTS[:3]]
    firsts = [serial.order.index(n) for n in lengths]
    assert firsts == sorted(firsts) and serial.order == sorted(serial.order, key=lengths.index)


def test_a_failing_sequence_leaves_the_others_unchanged(model: Model) -> None:
    faulty = Wrapped(model, fail_on=PROMPTS[1])
    params = _params(3, greedy=True)
    configs = [GenerationConfig.build(model.generation_defaults, **kw) for kw in params]
    texts: dict[int, str] = {}
    failed: dict[int, BaseException] = {}
    with faulty.new_batch() as batch:
        keys = [batch.add(faulty.tokenize(p), c) for p, c in zip(PROMPTS[:3], configs)]
        while batch.running:
            for key, event in batch.step():
                if isinstance(event, BaseException):
                    failed[key] = event
                else:
                    texts[key] = texts.get(key, "") + event.text
    assert list(failed) == [keys[1]] and "injected fault" in str(failed[keys[1]])
    for i in (0, 2):
        assert texts[keys[i]] == model.generate(PROMPTS[i], **params[i]).text
    with pytest.raises(RuntimeError, match="injected fault"):
        faulty.generate_batch(PROMPTS[:3], params)


def test_bad_input_is_refused_before_anything_runs(model: Model) -> None:
    wrapped = Wrapped(model)
    with pytest.raises(InvalidParameterError, match="list of strings"):
        wrapped.generate_batch("Once")  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterError, match="2 parameter sets for 3 prompts"):
        wrapped.generate_batch(PROMPTS[:3], [{}, {}])
    with pytest.raises(InvalidParameterError, match="temperature"):
        wrapped.generate_batch(PROMPTS[:3], [{}, {"temperature": -1}, {}])
    with pytest.raises(InvalidParameterError, match="context"):
        wrapped.generate_batch(["Once", "a" * 5000])
    assert wrapped.order == [], "nothing may run when one request is bad"
    with pytest.raises(InvalidParameterError, match="at least one slot"):
        wrapped.new_batch(0)
    with wrapped.new_batch(1) as batch:
        config = GenerationConfig(seed=1)
        batch.add(wrapped.tokenize("Once"), config)
        with pytest.raises(InvalidParameterError, match="slots of the batch are taken"):
            batch.add(wrapped.tokenize("Lily"), config)
        with pytest.raises(InvalidParameterError, match="empty"):
            Batch(Wrapped(model)).add([], config)


def test_a_batched_decoder_runs_through_the_same_batch(model: Model) -> None:
    batched = BatchedBigram(model)
    assert batched.batching == "batched" and model.batching == "interleaved"
    for greedy in (True, False):
        params = _params(len(PROMPTS), greedy)
        out = batched.generate_batch(PROMPTS, params, slots=3)
        assert [c.text for c in out] == [model.generate(p, **kw).text for p, kw in zip(PROMPTS, params)]
        steps = batched.decoders[-1].steps
        assert max(steps) == 3, "three sequences must share a step"
        assert batched.order == [], "a batched decoder replaces the per-sequence streams"
    check_batch_join_and_cancel(batched, PROMPTS)


def test_a_closed_model_refuses_batches(model: Model) -> None:
    wrapped = Wrapped(model)
    batch = wrapped.new_batch()
    key = batch.add(wrapped.tokenize("Once"), GenerationConfig(seed=1))
    wrapped.close()
    with pytest.raises(Exception, match="closed"):
        batch.step()
    batch.cancel(key)
    with pytest.raises(Exception, match="closed"):
        wrapped.generate_batch(["Once"])


# ---- LLaMA: llama.cpp and transformers batched, and each without its batched decoder ------------
@pytest.fixture(scope="module")
def llama_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from openllm_hub_llama.convert_gguf import write_gguf
    from openllm_hub_llama.tiny import fixture_tokenizer, make_tiny_hf

    hf = make_tiny_hf(tmp_path_factory.mktemp("batch-hf"), tokenizer_model=fixture_tokenizer(), num_kv_heads=2)
    gguf = tmp_path_factory.mktemp("batch-gguf") / "tiny-f32.gguf"
    write_gguf(hf, gguf, "f32")
    return {"hf": hf, "gguf": gguf}


LLAMA_PROMPTS = ["Once upon a time", "Hello", "The little dog ran to the big house", "A"]


@pytest.mark.parametrize("kind", ["gguf", "gguf-swap", "hf", "hf-interleaved"])
def test_llama_batches_equal_single_runs(llama_paths: dict[str, Path], kind: str) -> None:
    """llama.cpp and transformers decode a batch in one forward pass (openllm_hub.engines.llama_cpp_batch,
    openllm_hub_llama.engine_hf.HFBatchDecoder); "gguf-swap" is the same model without its batched
    decoder: the core's interleaving, which swaps the one context's state between sequences
    (``sequence_interleaving = "swap"``); "hf-interleaved" interleaves generators that each hold
    their own cache (``"independent"``)."""
    with openllm_hub.load(llama_paths[kind.split("-")[0]], device="cpu", threads=1) as m:
        if kind in ("gguf-swap", "hf-interleaved"):
            m.__class__ = _swap_only(type(m))
        assert m.batching == {"gguf": "batched", "gguf-swap": "interleaved", "hf": "batched",
                              "hf-interleaved": "interleaved"}[kind]
        assert m.sequence_interleaving == ("independent" if kind.startswith("hf") else "swap")
        check_batch_equals_single(m, LLAMA_PROMPTS)
        check_batch_join_and_cancel(m, LLAMA_PROMPTS)


def _swap_only(cls: type[Model]) -> type[Model]:
    """``cls`` without its batched decoder (the core's default hook: interleave)."""
    return type(f"SwapOnly{cls.__name__}", (cls,), {"_batch_decoder": Model._batch_decoder})


def test_llama_cpp_single_calls_in_the_middle_of_a_batch_do_not_disturb_it(llama_paths: dict[str, Path]) -> None:
    """generate() and logits() use the one context too: the batch's running sequence is saved first."""
    with openllm_hub.load(llama_paths["gguf"], device="cpu", threads=1) as m:
        params = [{"seed": 1 + i, "max_new_tokens": 12, "temperature": 0.9} for i in range(2)]
        want = [m.generate(p, **kw).text for p, kw in zip(LLAMA_PROMPTS[:2], params)]
        aside = m.generate(LLAMA_PROMPTS[2], seed=3, max_new_tokens=8).text
        logits = m.logits(m.tokenize(LLAMA_PROMPTS[3]))
        texts = ["", ""]
        steps = 0
        for index, chunk in m.stream_batch(LLAMA_PROMPTS[:2], params):
            texts[index] += chunk.text
            steps += 1
            if steps in (3, 6):
                assert m.generate(LLAMA_PROMPTS[2], seed=3, max_new_tokens=8).text == aside
                np.testing.assert_array_equal(m.logits(m.tokenize(LLAMA_PROMPTS[3])), logits)
        assert texts == want
