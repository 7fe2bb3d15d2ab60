"""A Mistral-style sliding window on engines that attend over the whole context.

A HuggingFace Mistral is a LLaMA whose attention sees only the last ``sliding_window`` tokens.
llama.cpp's own converter writes it as a ``llama`` GGUF without the window, and llama.cpp runs
``llama`` files with full attention; the transformers engine runs ``LlamaForCausalLM``, also
without it. Within the window both attentions are the same; beyond it they differ. The choice
here (``openllm_hub_llama.checkpoint.window_context``): the converter records the window
(``llama.attention.sliding_window``); by default the context stops at the window with a one-line
warning, so what the model computes is the original model's and a longer prompt is refused as
too long; a context asked for beyond the window (``n_ctx``) is opened, with a warning that
beyond the window the answers differ.

The reference is transformers' own ``MistralForCausalLM`` (eager attention, float32) on the same
random weights, with the window (the original model) and without it (full attention). Measured
(llama-cpp-python 0.3.36, transformers 5.24, torch CPU), max |diff| / logit range: within the
window 8.0e-7 (llama.cpp) and 4.0e-7 (transformers engine); a 144-token prompt on llama.cpp
against full attention 7.8e-7, against the original model beyond the window 0.54.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from openllm_hub_llama.checkpoint import LlamaHParams, window_context
from openllm_hub_llama.tiny import fixture_tokenizer, make_tiny_hf

import openllm_hub
from openllm_hub.errors import InvalidParameterError
from openllm_hub.plugin import read_gguf_metadata

WINDOW = 48
CONTEXT = 256
#: max |logit diff| / logit range: f32 GGUF on llama.cpp vs transformers (the LLaMA conversion
#: bound of test_convert_gguf.py's f32 case, measured there at 4.1e-6)
BOUND = 1e-4


@pytest.fixture(scope="module")
def mistral(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random LLaMA folder relabelled as HF Mistral (the same tensors) with a window."""
    folder = make_tiny_hf(tmp_path_factory.mktemp("mistral") / "hf", tokenizer_model=fixture_tokenizer(),
                          max_position_embeddings=CONTEXT, seed=5, init_std=0.2)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(model_type="mistral", architectures=["MistralForCausalLM"], sliding_window=WINDOW)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


@pytest.fixture(scope="module")
def gguf(mistral: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return openllm_hub.convert(mistral, tmp_path_factory.mktemp("mistral-gguf") / "m.gguf", to="gguf",
                               outtype="f32", progress=False).path


def reference(folder: Path, ids: list[int], *, window: bool) -> np.ndarray:
    from transformers import MistralForCausalLM

    extra: dict[str, Any] = {} if window else {"sliding_window": None}
    model = MistralForCausalLM.from_pretrained(folder, attn_implementation="eager", dtype=torch.float32,
                                               local_files_only=True, **extra).eval()
    with torch.no_grad():
        out: np.ndarray = model(torch.tensor([ids])).logits[0].numpy()
    return out


def relative(ref: np.ndarray, got: np.ndarray) -> float:
    return float(np.abs(ref - got).max() / (ref.max() - ref.min()))


def prompt_ids(m: Any, n: int) -> list[int]:
    ids = m.tokenize(" ".join(f"word{i} and more" for i in range(n)))
    assert len(ids) >= n
    return list(ids[:n])


def test_the_converter_records_the_window(gguf: Path) -> None:
    meta = read_gguf_metadata(gguf)
    assert meta["general.architecture"] == "llama"  # as llama.cpp's converter writes a Mistral
    assert meta["llama.attention.sliding_window"] == WINDOW and meta["llama.context_length"] == CONTEXT


def test_a_window_as_large_as_the_context_is_no_window() -> None:
    base = {"num_attention_heads": 4, "hidden_size": 64, "vocab_size": 100, "intermediate_size": 128,
            "num_hidden_layers": 1, "rms_norm_eps": 1e-6, "max_position_embeddings": 256, "model_type": "mistral"}
    assert LlamaHParams.from_hf_config({**base, "sliding_window": 4096}, "x").sliding_window is None
    assert LlamaHParams.from_hf_config({**base, "sliding_window": None}, "x").sliding_window is None
    assert LlamaHParams.from_hf_config({**base, "sliding_window": 64}, "x").sliding_window == 64
    assert window_context(None, None, 4096, "e") == (4096, None)
    assert window_context(4096, None, 4096, "e") == (4096, None)  # Mistral 7B v0.1: the default fits


def test_by_default_the_context_stops_at_the_window(gguf: Path, mistral: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="openllm_hub"), \
            openllm_hub.load(gguf, device="cpu", threads=1, kv_cache_type="f32") as m:
        assert m.info.context_length == WINDOW and m.info.extra["sliding_window"] == WINDOW
        ids = prompt_ids(m, WINDOW - 1)
        got = m.logits(ids)
        with pytest.raises(InvalidParameterError, match="context"):
            m.logits(prompt_ids(m, WINDOW + 8))
    warnings = [r.getMessage() for r in caplog.records if r.name == "openllm_hub"]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert f"sliding window of {WINDOW} tokens" in warnings[0] and "capped" in warnings[0]
    assert relative(reference(mistral, ids, window=True), got) <= BOUND


def test_a_context_beyond_the_window_is_opened_with_a_warning(gguf: Path, mistral: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    n = 3 * WINDOW
    with caplog.at_level(logging.WARNING, logger="openllm_hub"), \
            openllm_hub.load(gguf, device="cpu", threads=1, kv_cache_type="f32", n_ctx=CONTEXT) as m:
        assert m.info.context_length == CONTEXT
        ids = prompt_ids(m, n)
        got = m.logits(ids)
    warnings = [r.getMessage() for r in caplog.records if r.name == "openllm_hub"]
    assert len(warnings) == 1 and f"n_ctx={CONTEXT} is beyond" in warnings[0] and "differ" in warnings[0]
    sliding, full = reference(mistral, ids, window=True), reference(mistral, ids, window=False)
    # within the window: the original model; beyond it: full attention, not the original model
    assert relative(sliding[:WINDOW], got[:WINDOW]) <= BOUND
    assert relative(full, got) <= BOUND
    assert relative(sliding[WINDOW:], got[WINDOW:]) > 50 * BOUND


def test_the_transformers_engine_stops_at_the_window(mistral: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="openllm_hub"), openllm_hub.load(mistral, device="cpu") as m:
        assert m.info.engine == "transformers" and m.info.context_length == WINDOW
        ids = prompt_ids(m, WINDOW - 1)
        got = m.logits(ids)
    warnings = [r.getMessage() for r in caplog.records if r.name == "openllm_hub"]
    assert len(warnings) == 1 and "capped" in warnings[0] and "engine='llama.cpp'" in warnings[0]
    assert relative(reference(mistral, ids, window=True), got) <= BOUND
