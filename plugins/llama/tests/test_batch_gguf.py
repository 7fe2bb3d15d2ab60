"""Several sequences in one llama.cpp forward pass (openllm_hub.engines.llama_cpp_batch), on a tiny f32 GGUF.

Each sequence of a batch must give what it gives alone: logits within a stated bound (llama.cpp's
batched kernels may sum in another order), greedy tokens exactly, also when sequences join and
leave mid-batch, when long prompts are read in chunks, and when the context grows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from llama_lora_tiny import make_peft_adapter
from openllm_hub_llama.lora_gguf import convert_adapter_to_gguf

import openllm_hub
from openllm_hub.core.config import GenerationConfig
from openllm_hub.core.model import Model
from openllm_hub.engines.llama_cpp import LlamaCppModel
from openllm_hub.engines.llama_cpp_batch import LlamaCppBatchDecoder
from openllm_hub.testing import (
    BATCH_PROMPTS,
    LONG_TEXT,
    check_batch_logprobs_match_single_runs,
    check_greedy_batch_matches_single_runs,
    check_joins_and_cancels_leave_the_others_unchanged,
    check_long_prompt_does_not_stall_the_others,
    check_long_prompt_in_batch,
    check_sampled_batch_matches_single_runs,
    long_prompt,
)

#: Logits of a row computed in a batch against the same row alone, relative to the row's range.
#: Measured on this f32 model: 0 to 3e-7 (summation order of llama.cpp's batched kernels and of
#: the attention over the unified KV cache); f32 rounding is 6e-8, so this allows a few roundings.
#: A 1,024-token prompt read in 64-token chunks: 6.4e-7 (its attention sums ~1,000 cells in
#: other groupings), still within it.
BOUND = 2e-6



@pytest.fixture(scope="module")
def gguf(tiny_gguf_factory: Callable[..., Path]) -> Path:
    return tiny_gguf_factory("f32", num_kv_heads=2)


@pytest.fixture(scope="module")
def model(gguf: Path) -> Iterator[LlamaCppModel]:
    with openllm_hub.load(gguf, device="cpu", threads=1, kv_cache_type="f32") as m:
        assert isinstance(m, LlamaCppModel)
        yield m


def _greedy(n: int = 12, seed: int = 0) -> dict[str, Any]:
    return {"max_new_tokens": n, "temperature": 0.0, "seed": seed}


def _config(model: Model, **kw: Any) -> GenerationConfig:
    return GenerationConfig.build(model.generation_defaults, **kw).with_seed()


def _relative(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(a - ref).max()) / float(ref.max() - ref.min())


def test_model_batches(model: Model) -> None:
    assert model.batching == "batched"
    with model.new_batch(3) as batch:
        assert isinstance(batch.decoder, LlamaCppBatchDecoder)
        assert batch.decoder.n_seq_max == 3
        assert batch.slot_tokens == model.info.context_length


def _logits_worst(model: LlamaCppModel, prompts: list[str], step_tokens: int, n: int = 12) -> float:
    """The prompts decoded together (``n`` greedy tokens each, prompts read in chunks of at most
    ``step_tokens`` tokens a step): every row a sequence samples from (its prompt's last row,
    then one per generated token) against ``Model.logits`` of the same ids alone, the same
    greedy token; returns the largest difference relative to the row's range."""
    dec = LlamaCppBatchDecoder(model, len(prompts), keep_logits=True, step_tokens=step_tokens)
    ids_of = [model.tokenize(p) for p in prompts]
    generated: dict[int, list[int]] = {k: [] for k in range(len(prompts))}
    try:
        for key, ids in enumerate(ids_of):
            dec.join(key, ids, _config(model, **_greedy(n)))
        for _ in range(200):
            for key, token in dec.step().items():
                assert isinstance(token, int)
                generated[key].append(token)
            if all(len(g) >= n for g in generated.values()):
                break
        worst = 0.0
        for key, ids in enumerate(ids_of):
            rows = dec.logits[key]
            assert len(rows) == len(generated[key]) >= 6
            alone = model.logits(ids + generated[key][:-1])[len(ids) - 1:]
            for row, ref in zip(rows, alone):
                worst = max(worst, _relative(row, ref))
                assert int(np.argmax(row)) == int(np.argmax(ref))
        return worst
    finally:
        dec.close()


def test_logits_in_a_batch_equal_alone(model: LlamaCppModel) -> None:
    """Every row a sequence samples from in the batch (its prompt's last row, then one per
    generated token) against ``Model.logits`` of the same ids alone."""
    worst = _logits_worst(model, BATCH_PROMPTS[:4], 6)  # long prompts read in chunks
    assert worst <= BOUND, f"batch logits differ from the single run by {worst:.3g} of the range"


def test_a_long_prompt_in_a_batch_of_short_ones(model: LlamaCppModel) -> None:
    """A >= 1,024-token prompt among short ones (positions far out in the unified KV cache,
    read in 64-token chunks while the short ones generate): every logits row as alone within
    the same bound (measured 6.4e-7), greedy tokens as the single runs (kit check: all at once
    and 3 slots)."""
    long = check_long_prompt_in_batch(model, BATCH_PROMPTS, _greedy())
    assert len(model.tokenize(long)) >= 1024
    worst = _logits_worst(model, [*BATCH_PROMPTS[:3], long], 64)
    assert worst <= BOUND, f"batch logits differ from the single run by {worst:.3g} of the range"


def test_a_long_prompt_read_in_chunks_does_not_stall_the_others(model: LlamaCppModel) -> None:
    """A 64-token step budget, three sequences generating: a >= 1,024-token prompt joins and is
    read in chunks of the budget's rest (64 - 3 tokens a step, over ceil(n / 61) steps), while
    each running sequence gets its token at every one of those steps, as alone. (Its text
    starts unlike every other prompt of the module, so the model's prefix cache has no part
    of it: the whole prompt is read.)"""
    import math

    long = long_prompt(model, text="Zebras graze quietly near a river; " + LONG_TEXT)
    n = len(model.tokenize(long))
    assert n >= 1024
    dec = LlamaCppBatchDecoder(model, 4, step_tokens=64)
    try:
        steps = check_long_prompt_does_not_stall_the_others(model, dec, BATCH_PROMPTS[:3], long, _greedy())
    finally:
        dec.close()
    assert steps == math.ceil(n / (64 - 3)), f"{n} prompt tokens read in {steps} steps"


def test_greedy_batch_of_8_equals_single_runs(model: Model) -> None:
    check_greedy_batch_matches_single_runs(model, BATCH_PROMPTS, _greedy(), slots=(None, 8, 3))


def test_sampled_batch_equals_single_runs(model: Model) -> None:
    """Same seed, same sampler chain: on this model the batch's last-bit differences move no draw."""
    check_sampled_batch_matches_single_runs(model, BATCH_PROMPTS)


def test_join_and_cancel_mid_batch_leave_the_others_unchanged(model: Model) -> None:
    check_joins_and_cancels_leave_the_others_unchanged(model, BATCH_PROMPTS, _greedy())


def test_context_grows_when_more_sequences_join(model: Model) -> None:
    """A batch without a slot limit starts with a context for one sequence; joining ones remake
    it larger and the running sequences' KV cells move over unchanged."""
    single = [model.generate(p, **_greedy(10)) for p in BATCH_PROMPTS[:5]]
    ids = [model.tokenize(p) for p in BATCH_PROMPTS[:5]]
    got: dict[int, list[int]] = {}
    with model.new_batch() as batch:
        dec = batch.decoder
        assert isinstance(dec, LlamaCppBatchDecoder) and dec.n_seq_max == 1
        keys = {batch.add(ids[0], _config(model, **_greedy(10))): 0}
        step = 0
        while batch.running or step < 4:
            if 1 <= step <= 4:
                keys[batch.add(ids[step], _config(model, **_greedy(10)))] = step
            for key, event in batch.step():
                assert not isinstance(event, BaseException)
                got.setdefault(keys[key], []).extend(event.token_ids)
            step += 1
        assert dec.n_seq_max == 8
    assert [tuple(got[i]) for i in range(5)] == [s.token_ids for s in single]


def test_sequences_wait_when_the_context_cannot_grow(model: LlamaCppModel) -> None:
    """At its limit (here ``max_seqs=2``; by default llama.cpp's and half the RAM's) a joining
    sequence waits for a free sequence id, then runs as alone; a waiting one may be cancelled."""
    single = [model.generate(p, **_greedy(8)) for p in BATCH_PROMPTS[:5]]
    dec = LlamaCppBatchDecoder(model, 1, max_seqs=2)
    got: dict[int, list[int]] = {k: [] for k in range(5)}
    try:
        for key in range(5):
            dec.join(key, model.tokenize(BATCH_PROMPTS[key]), _config(model, **_greedy(8)))
        assert dec.n_seq_max == 2
        dec.leave(3)  # cancelled while waiting
        live = {0, 1, 2, 4}
        for _ in range(100):
            out = dec.step()
            assert len(out) <= 2
            for key, token in out.items():
                assert isinstance(token, int)
                got[key].append(token)
                if len(got[key]) == 8:
                    dec.leave(key)
                    live.discard(key)
            if not live:
                break
        assert not live
    finally:
        dec.close()
    assert [tuple(got[k]) for k in (0, 1, 2, 4)] == [single[k].token_ids for k in (0, 1, 2, 4)]
    assert got[3] == []


def test_closing_the_model_under_an_open_batch(gguf: Path) -> None:
    """The batch's context is freed with the model (before it); the batch then refuses to step."""
    m = openllm_hub.load(gguf, device="cpu", threads=1)
    batch = m.new_batch(2)
    key = batch.add(m.tokenize("Once"), _config(m, **_greedy()))
    batch.step()
    m.close()
    with pytest.raises(Exception, match="closed"):
        batch.step()
    batch.cancel(key)
    batch.close()


def test_finished_sequences_leave_the_kv_cache(model: LlamaCppModel) -> None:
    import llama_cpp

    dec = LlamaCppBatchDecoder(model, 2)
    try:
        dec.join(0, model.tokenize(BATCH_PROMPTS[0]), _config(model, **_greedy()))
        dec.join(1, model.tokenize(BATCH_PROMPTS[1]), _config(model, **_greedy()))
        dec.step()
        dec.step()
        mem = dec._ctx.memory
        assert llama_cpp.llama_memory_seq_pos_max(mem, 0) >= 0
        dec.leave(0)
        assert llama_cpp.llama_memory_seq_pos_max(mem, 0) == -1
        assert llama_cpp.llama_memory_seq_pos_max(mem, 1) >= 0
        dec.join(2, model.tokenize(BATCH_PROMPTS[2]), _config(model, **_greedy()))  # takes the freed sequence id
        assert dec.n_seq_max == 2
    finally:
        dec.close()


def test_slot_full_ends_a_sequence_as_alone(gguf: Path) -> None:
    """A sequence whose slot fills up ends where the single run ends (context full)."""
    with openllm_hub.load(gguf, device="cpu", threads=1, kv_cache_type="f32", n_ctx=32) as m:
        n_ctx = m.info.context_length  # llama.cpp rounds the context up (to 256)
        assert n_ctx is not None
        prompts = [BATCH_PROMPTS[4], BATCH_PROMPTS[0]]
        single = [m.generate(p, max_new_tokens=n_ctx, temperature=0.0) for p in prompts]
        assert all(len(m.tokenize(p)) + len(a.token_ids) == n_ctx for p, a in zip(prompts, single))
        batch = m.generate_batch(prompts, max_new_tokens=n_ctx, temperature=0.0)
        assert [b.token_ids for b in batch] == [a.token_ids for a in single]
        assert [b.finish_reason for b in batch] == [a.finish_reason for a in single]


def test_lora_adapters_apply_in_the_batch(tiny_hf_factory: Callable[..., Path], gguf: Path,
                                          tmp_path: Path) -> None:
    base = tiny_hf_factory(num_kv_heads=2)
    adapter = make_peft_adapter(base, tmp_path / "a", r=4, alpha=8, targets=("q_proj", "v_proj", "lm_head"),
                                seed=5)
    lora = convert_adapter_to_gguf(adapter, gguf, tmp_path / "a.gguf")
    with openllm_hub.load(gguf, device="cpu", threads=1, lora=[(str(lora), 1.0)]) as m:
        single = [m.generate(p, **_greedy(10)) for p in BATCH_PROMPTS[:4]]
        batch = m.generate_batch(BATCH_PROMPTS[:4], **_greedy(10))
        assert [b.token_ids for b in batch] == [a.token_ids for a in single]
    with openllm_hub.load(gguf, device="cpu", threads=1) as plain:  # control: the adapter matters
        assert [plain.generate(p, **_greedy(10)).token_ids for p in BATCH_PROMPTS[:4]] != [a.token_ids for a in single]


def _wait_for(cond: Callable[[], bool], what: str, limit: float = 120.0) -> None:
    """Poll ``cond`` until it holds (``limit`` seconds at most: a deadlock fails, it times nothing)."""
    import time

    deadline = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.01)


def test_server_slots_run_the_gguf_model_batched(model: LlamaCppModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """``serve --parallel 4`` on the GGUF model: four concurrent requests, each answered as the
    SDK answers it alone, and the model card says the engine batches. That they overlapped is
    shown, not assumed: the engine's first decoding step waits (a gate around
    ``LlamaCppBatchDecoder.step``) until ``/health`` counts the four requests in flight, and the
    wrapper then sees one ``llama_decode`` give a token to all four sequences."""
    import threading

    from fastapi.testclient import TestClient

    from openllm_hub.server.app import create_app

    gate = threading.Event()
    per_step: list[int] = []  # sequences that got a token from each llama_decode
    real_step = LlamaCppBatchDecoder.step

    def gated_step(self: LlamaCppBatchDecoder) -> dict[int, Any]:
        gate.wait(120)
        out = real_step(self)
        per_step.append(sum(isinstance(t, int) for t in out.values()))
        return out

    monkeypatch.setattr(LlamaCppBatchDecoder, "step", gated_step)
    params = [{"max_tokens": 10 + i, "temperature": 0.0 if i % 2 else 0.8, "seed": 40 + i} for i in range(4)]
    want = [model.generate(BATCH_PROMPTS[i], max_new_tokens=10 + i, temperature=params[i]["temperature"],
                           seed=40 + i).text for i in range(4)]
    got: dict[int, object] = {}
    with TestClient(create_app(model, parallel=4)) as client:
        def run(i: int) -> None:
            r = client.post("/v1/completions", json={"model": "m", "prompt": BATCH_PROMPTS[i], **params[i]})
            got[i] = r.json()["choices"][0]["text"] if r.status_code == 200 else r.text

        threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()

        def in_flight() -> bool:
            h = client.get("/health").json()
            return bool(h["running"] + h["waiting"] == 4)

        try:
            _wait_for(in_flight, "four requests in flight at once")
        finally:
            gate.set()
        for t in threads:
            t.join(120)
        card = client.get("/v1/models").json()["data"][0]["meta"]
    assert [got.get(i) for i in range(4)] == want
    assert card["batching"] == "batched" and card["parallel"] == 4
    assert max(per_step) == 4, f"tokens per llama_decode: {per_step}: the four requests never ran in one batch"


def test_logprobs_in_a_batch_equal_alone(model: Model) -> None:
    """The batched decoder scores each token against its raw logits row, as the single path does;
    bound: llama.cpp's multi-row kernels may differ from the one-row path in the last bits (the
    logits bound above), far below 1e-4 in log-probability."""
    check_batch_logprobs_match_single_runs(model, ["Once upon a time", "The cat", "In a far away land there lived"],
                                           _greedy(), atol=1e-4)
