"""``/metrics`` exports the engine's prefix cache (``Model.prefix_cache_stats``): requests that
share a long system prompt show up as hits and reused tokens; a model without a cache exports none."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

import openllm_hub
from openllm_hub.core.model import Model
from openllm_hub.server import create_app

SYSTEM = " ".join(f"Rule {i}: answer briefly and politely." for i in range(40))
QUESTIONS = ["What is a cat?", "Where is the sea?", "Why is the sky blue?"]


def _samples(text: str) -> dict[str, float]:
    """Unlabelled samples of a /metrics page, by name, parsed with prometheus_client's parser."""
    return {s.name: s.value for fam in text_string_to_metric_families(text) for s in fam.samples if not s.labels}


def test_prefix_cache_counters_on_metrics(tiny_llama: tuple[Path, Path]) -> None:
    _, gguf = tiny_llama
    with openllm_hub.load(gguf, device="cpu", threads=1, kv_cache_type="f32", prefix_cache_mib=64) as m:
        shared = len(m.tokenize(SYSTEM))
        assert shared > 2 * m.prefix_cache.block_tokens, "the system prompt must span several cache blocks"
        with TestClient(create_app(m, model_id="tiny", parallel=2)) as http:
            before = _samples(http.get("/metrics").text)
            assert before["openllm_hub_prefix_cache_hits_total"] == 0
            assert before["openllm_hub_prefix_cache_budget_bytes"] == 64 * 2**20
            for q in QUESTIONS:
                r = http.post("/v1/completions", json={"model": "tiny", "prompt": f"{SYSTEM}\n{q}", "max_tokens": 3,
                                                       "temperature": 0})
                assert r.status_code == 200, r.text
            after = _samples(http.get("/metrics").text)
        stats = m.prefix_cache_stats()
    assert stats is not None
    # the first request stores the prompt; each later one reuses at least the shared blocks
    assert after["openllm_hub_prefix_cache_hits_total"] == stats["hits"] >= len(QUESTIONS) - 1
    assert after["openllm_hub_prefix_cache_tokens_reused_total"] == stats["tokens_reused"]
    assert stats["tokens_reused"] >= (len(QUESTIONS) - 1) * (shared // m.prefix_cache.block_tokens) \
        * m.prefix_cache.block_tokens
    assert 0 < after["openllm_hub_prefix_cache_bytes"] == stats["bytes"] <= stats["budget_bytes"]
    assert after["openllm_hub_prefix_cache_entries"] == stats["entries"] >= 1


def test_no_prefix_cache_no_metrics(model: Model) -> None:
    assert model.prefix_cache_stats() is None
    with TestClient(create_app(model, model_id="bigram")) as http:
        page = http.get("/metrics").text
    assert "openllm_hub_requests_running" in page and "prefix_cache" not in page


@pytest.mark.parametrize("mib", [0])
def test_a_disabled_cache_reports_its_zero_budget(tiny_llama: tuple[Path, Path], mib: int) -> None:
    _, gguf = tiny_llama
    with openllm_hub.load(gguf, device="cpu", threads=1, prefix_cache_mib=mib) as m:
        stats = m.prefix_cache_stats()
        assert stats is not None and stats["budget_bytes"] == 0 and stats["entries"] == 0
