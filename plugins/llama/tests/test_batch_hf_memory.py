"""The HF LLaMA batched decoder within a KV memory budget (engines.torch_batch.plan_rows), and the server's 400.

A padded KV cache grows with rows x the longest row. With ``batch_kv_bytes`` set (by default half
the free memory), a batch's slots hold at most ``slot_tokens`` tokens each and at most
``max_rows`` sequences are rows at once (the others wait, unread), so the cache fits; the
results stay those of single runs, and the server refuses a request whose prompt plus
``max_tokens`` exceeds a slot with a 400 before admitting it. fp32 tiny model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from openllm_hub_llama.engine_hf import HFBatchDecoder, HFModel

import openllm_hub
from openllm_hub.core.config import GenerationConfig
from openllm_hub.engines.torch_batch import MIN_SLOT_TOKENS

PROMPTS = ["Once upon a time", "Hello", "The little dog ran to the big house and"]


@pytest.fixture(scope="module")
def model(tiny_hf_factory: Callable[..., Path]) -> Iterator[HFModel]:
    with openllm_hub.load(tiny_hf_factory(num_kv_heads=2), device="cpu", threads=1, prefix_cache_mib=0) as m:
        assert isinstance(m, HFModel)
        yield m
        m.batch_kv_bytes = None


def test_default_budget_holds_full_context_slots(model: HFModel) -> None:
    """A tiny model's cache costs little: the default budget (half the free RAM) gives every
    slot the whole context, and more rows than slots fit."""
    model.batch_kv_bytes = None
    dec = HFBatchDecoder(model, slots=4)
    assert dec.slot_tokens == model.info.context_length
    assert dec.max_rows is not None and dec.max_rows >= 4


def test_a_small_budget_shrinks_slots_and_rows_and_stays_exact(model: HFModel) -> None:
    """A budget of 2 x 600 tokens: 2 slots of 600 tokens; 3 sequences at once get slots of the
    floor (512 tokens) and only 2 rows, the third waiting; every sequence still gives its single run."""
    per = model.info.extra["kv_bytes_per_token"]
    model.batch_kv_bytes = 2 * 600 * per
    with model.new_batch(2) as batch:
        assert batch.slot_tokens == 600
    dec = HFBatchDecoder(model, slots=3)
    assert (dec.max_rows, dec.slot_tokens) == (2, MIN_SLOT_TOKENS)
    params = {"max_new_tokens": 10, "temperature": 0.0}
    single = [model.generate(p, **params) for p in PROMPTS]
    try:
        config = GenerationConfig.build(model.generation_defaults, **params).with_seed()
        for key, p in enumerate(PROMPTS):
            dec.join(key, model.tokenize(p), config)
        got: dict[int, list[int]] = {0: [], 1: [], 2: []}
        most = 0
        for _ in range(40):
            for key, token in dec.step().items():
                assert isinstance(token, int)
                got[key].append(token)
            most = max(most, dec.rows)
            for key in [k for k, t in got.items() if len(t) == 10]:
                dec.leave(key)
                got[key].append(-1)  # done
        assert most == 2  # never more rows than the budget holds
        assert [t[:-1] for t in got.values()] == [list(a.token_ids[:10]) for a in single]
    finally:
        dec.close()
    assert [b.token_ids for b in model.generate_batch(PROMPTS, **params)] == [a.token_ids for a in single]


def test_a_sequence_ends_where_its_slot_is_full(model: HFModel) -> None:
    """With slots smaller than the context, a sequence ends (finish "length") when its history
    fills its slot, as a single run ends at the context."""
    per = model.info.extra["kv_bytes_per_token"]
    model.batch_kv_bytes = 40 * per  # one slot of 40 tokens
    ids = model.tokenize(PROMPTS[2])
    with model.new_batch(1) as batch:
        assert batch.slot_tokens == 40
        key = batch.add(ids, GenerationConfig.build(model.generation_defaults, max_new_tokens=100,
                                                    temperature=0.0, stop=[]))
        tokens: list[int] = []
        finish = None
        while batch.running:
            for k, event in batch.step():
                assert k == key and not isinstance(event, BaseException)
                tokens += event.token_ids
                finish = event.finish_reason or finish
    alone = model.generate(PROMPTS[2], max_new_tokens=40 - len(ids), temperature=0.0, stop=[])
    if alone.finish_reason == "length":
        assert finish == "length" and len(ids) + len(tokens) == 40
    assert tuple(tokens) == alone.token_ids


def test_server_refuses_a_request_over_the_memory_slot_before_admission(model: HFModel) -> None:
    """Through the server (2 slots within a budget of 2 x 600 tokens): /v1/models shows 600-token
    slots; a prompt plus max_tokens over 600 gets the 400 ``context_length_exceeded`` and never
    runs; one that fits runs; without max_tokens the answer is bounded by the room left."""
    from fastapi.testclient import TestClient

    from openllm_hub.server.app import create_app

    per = model.info.extra["kv_bytes_per_token"]
    model.batch_kv_bytes = 2 * 600 * per
    prompt = " ".join(["word"] * 560)
    n = len(model.tokenize(prompt))
    assert n < 600 < model.info.context_length
    with TestClient(create_app(model, parallel=2)) as client:
        meta = client.get("/v1/models").json()["data"][0]["meta"]
        assert meta["slot_tokens"] == 600 and meta["batching"] == "batched"
        r = client.post("/v1/completions", json={"model": "m", "prompt": prompt, "max_tokens": 600 - n + 1})
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["code"] == "context_length_exceeded" and err["param"] == "max_tokens"
        assert f"at most {600 - n}" in err["message"] and "600 tokens" in err["message"]
        r = client.post("/v1/completions", json={"model": "m", "prompt": prompt, "max_tokens": 3, "temperature": 0})
        assert r.status_code == 200, r.text
        r = client.post("/v1/completions", json={"model": "m", "prompt": prompt + " more", "temperature": 0})
        assert r.status_code == 200 and r.json()["usage"]["total_tokens"] <= 600
        from prometheus_client.parser import text_string_to_metric_families

        ran = sum(sample.value for family in text_string_to_metric_families(client.get("/metrics").text)
                  for sample in family.samples if sample.name == "openllm_hub_requests_total")
        assert ran == 2, "the refused request never ran"


def test_the_load_option(tiny_hf_factory: Callable[..., Path]) -> None:
    """``batch_kv_mib`` sets the budget: 1 MiB holds 2,048 tokens of this model's 512-byte cache."""
    with openllm_hub.load(tiny_hf_factory(num_kv_heads=2), device="cpu", threads=1, batch_kv_mib=1) as m:
        assert isinstance(m, HFModel) and m.batch_kv_bytes == 2**20
        per = m.info.extra["kv_bytes_per_token"]
        dec = HFBatchDecoder(m, slots=4)
        assert dec.slot_tokens == min(m.info.context_length, 2**20 // per // 4)
    with pytest.raises(openllm_hub.errors.OpenLLMHubError):
        openllm_hub.load(tiny_hf_factory(num_kv_heads=2), device="cpu", threads=1, batch_kv_mib=0)


def test_llama_cpp_refuses_the_torch_option(tiny_hf_factory: Callable[..., Path]) -> None:
    """The same folder on llama.cpp (converted to GGUF in the cache) refuses ``batch_kv_mib`` by
    name instead of ignoring it: llama.cpp's slots share its one context (``n_ctx``)."""
    with pytest.raises(openllm_hub.errors.InvalidParameterError) as err:
        openllm_hub.load(tiny_hf_factory(num_kv_heads=2), engine="llama.cpp", device="cpu", threads=1,
                         batch_kv_mib=1)
    assert err.value.where == "batch_kv_mib" and "n_ctx" in (err.value.fix or "")
