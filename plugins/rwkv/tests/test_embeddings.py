"""``Model.embed`` on RWKV: the output of the final layer norm ``ln_out`` per position, checked
through the head against the rwkv package called directly.

The package (independent of this project; the ``pkg`` reference of conftest.py) computes
``logits = ln_out(x) @ head^T``. The ``head`` matrix is read here straight from the ``.pth``
file (``torch.load``), so our hidden states ``h`` are right when ``h @ head^T`` equals the
package's logits; ``head`` (512 or 65,536 rows x 64) has full column rank, so the logits fix
``h`` uniquely (the least-squares ``h`` recovered from them is compared too). Pooling (the
core's): the mean over ``tokenize(text)``, which for RWKV is the text's ids only (no BOS;
``[end-of-text]`` for an empty text).

Bounds (fp32, CPU; measured on these tiny models, heads of condition number 1.06-2.0):
``h @ head^T`` (float64) against the package's fp32 logits: <= 2.1e-7 of the logit range, for
the rwkv engine and for the transformers engine (RWKV-4, transformers' own implementation of
the recurrence) alike; bound 2e-6 of the range. The ``h`` recovered from the package's logits:
<= 2.3e-7 from ours (values up to 4.4); bound 2e-6. The two engines' embeddings: bound 1e-5.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import openllm_hub

VERSIONS = ("4", "5.2", "6", "7")
TEXTS = ["The RWKV state is the context. 你好，世界！ 🎉 12345", "a", "Long prompts are read in chunks. " * 6]
LOGIT_BOUND = 2e-6  # of the package's logit range
RECOVERED_BOUND = 2e-6  # absolute, hidden values
HF_LOGIT_BOUND, HF_HIDDEN_BOUND = 2e-6, 1e-5


def head_of(path: Path) -> np.ndarray:
    """The output layer straight from the checkpoint file, float64."""
    sd = torch.load(path, map_location="cpu", weights_only=True)
    head: np.ndarray = sd["head.weight"].double().numpy()
    return head


def check_through_head(h: np.ndarray, head: np.ndarray, logits: np.ndarray, bound: float) -> None:
    assert h.shape == (logits.shape[0], head.shape[1])
    rng = float(logits.max() - logits.min())
    assert np.abs(h.astype(np.float64) @ head.T - logits).max() <= bound * rng


@pytest.mark.parametrize("version", VERSIONS)
def test_hidden_states_through_the_head_equal_package_logits(version: str, ckpt: dict[str, Path],
                                                             shared_model: Callable[..., Any], pkg: Any) -> None:
    model = shared_model(version)
    head = head_of(ckpt[version])
    ref = pkg.model(ckpt[version], version)
    for text in TEXTS:
        ids = model.tokenize(text)
        logits = pkg.logits(ref, ids).astype(np.float64)
        h = model._hidden_states(ids)
        check_through_head(h, head, logits, LOGIT_BOUND)
        assert np.linalg.matrix_rank(head) == head.shape[1]
        recovered = np.linalg.lstsq(head, logits.T, rcond=None)[0].T
        assert np.abs(h - recovered).max() <= RECOVERED_BOUND
        # embed: the mean, and the map is linear, so mean(h) @ head^T = mean(logits)
        vec = np.asarray(model.embed([text])[0])
        check_through_head(vec[None], head, logits.mean(0, keepdims=True), LOGIT_BOUND)


@pytest.mark.parametrize("version", ("5.2", "7"))
def test_chunked_reading_carries_the_state(version: str, ckpt: dict[str, Path], shared_model: Callable[..., Any],
                                           pkg: Any) -> None:
    """``chunk_len=8``: the state goes from chunk to chunk as the package's chunked reading."""
    model = shared_model(version, chunk_len=8)
    ids = model.tokenize(TEXTS[2])
    assert len(ids) > 24
    logits = pkg.logits(pkg.model(ckpt[version], version), ids, chunk=8).astype(np.float64)
    check_through_head(model._hidden_states(ids), head_of(ckpt[version]), logits, LOGIT_BOUND)


@pytest.mark.parametrize(("version", "options"), [("4", {"jit": True}), ("6", {"int8": True}),
                                                  ("7", {"jit": True})])
def test_embedding_leaves_the_model_unchanged(version: str, options: dict[str, Any],
                                              shared_model: Callable[..., Any]) -> None:
    """The head comes back after the pass (TorchScript models included; an int8 head too)."""
    model = shared_model(version, **options)
    ids = model.tokenize(TEXTS[0])
    before = model.logits(ids)
    vec = model.embed([TEXTS[0]])
    assert np.array_equal(model.logits(ids), before)
    assert len(vec[0]) == model.info.extra["n_embd"]
    fp32 = shared_model(version)
    assert np.allclose(vec, fp32.embed([TEXTS[0]]), atol=0.1 if options.get("int8") else 1e-6)


def test_transformers_engine_through_the_head_equals_package_logits(ckpt: dict[str, Path], pkg: Any) -> None:
    """RWKV-4 on transformers (``RwkvModel.last_hidden_state``) against the rwkv package: the
    hidden states through the head, and the embeddings against the rwkv engine's."""
    head = head_of(ckpt["4"])
    ref = pkg.model(ckpt["4"], "4")
    with openllm_hub.load(ckpt["4"], device="cpu", engine="transformers") as hf, \
            openllm_hub.load(ckpt["4"], device="cpu") as native:
        assert hf.info.engine == "transformers" and native.info.engine == "rwkv"
        for text in TEXTS:
            ids = hf.tokenize(text)
            logits = pkg.logits(ref, ids).astype(np.float64)
            check_through_head(hf._hidden_states(ids), head, logits, HF_LOGIT_BOUND)
        got, want = np.asarray(hf.embed(TEXTS)), np.asarray(native.embed(TEXTS))
        assert np.abs(got - want).max() <= HF_HIDDEN_BOUND


def test_transformers_engine_chunks_carry_the_state(ckpt: dict[str, Path]) -> None:
    with openllm_hub.load(ckpt["4"], device="cpu", engine="transformers") as whole, \
            openllm_hub.load(ckpt["4"], device="cpu", engine="transformers", chunk_len=8) as chunked:
        ids = whole.tokenize(TEXTS[2])
        assert len(ids) > 24
        assert np.abs(whole._hidden_states(ids) - chunked._hidden_states(ids)).max() <= 1e-5


def test_an_empty_text_embeds_end_of_text(shared_model: Callable[..., Any]) -> None:
    model = shared_model("5.2")
    assert model.tokenize("") == [0]
    assert np.array_equal(model.embed([""])[0], model._hidden_states([0])[0].astype(np.float64))


@pytest.mark.parametrize(("version", "options"), [("7", {}), ("4", {"engine": "transformers"})])
def test_embedding_inside_a_running_batch_changes_no_sequence(version: str, options: dict[str, Any],
                                                              shared_model: Callable[..., Any]) -> None:
    from openllm_hub.testing import check_embedding_between_batch_steps_changes_no_sequence

    check_embedding_between_batch_steps_changes_no_sequence(shared_model(version, **options), repeat_penalty=1.0)
