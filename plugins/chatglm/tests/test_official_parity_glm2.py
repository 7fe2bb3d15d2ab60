"""ChatGLM2/3 against transformers' own GLM implementation, configured by transformers itself.

The fixture (``data/official_glm2/``, made by its ``make_fixture.py``, see its README) holds
tiny checkpoints in the official ChatGLM2/3 layout (plain ChatGLM2; ChatGLM2-6B-32k-style
``rope_ratio`` = position interpolation; ChatGLM3-6B-32k-style ``rope_ratio`` = rotary base
scaling), the ids of prompts built as the official ``chat()`` builds them (a short chat turn;
a multi-round chat of >= 1,024 ids), and the fp32 logits of ``transformers.GlmForCausalLM``
built from a config.json in transformers' format through ``AutoConfig`` (not from this
project's config reader) with the weights mapped by a documented renaming.

Bound: both sides run float32 on the same fp16-representable weights; they differ only in
operation order (fused vs split qkv matmul, SDPA vs eager attention, the rotary formula's
order of products, RMSNorm's multiply order), so the logits agree to a few float32 rounding
steps of the logit range: observed <= 2.8e-7 of the range (about 1e-5 absolute on a range of
~35). The bound is 2e-6 of the range (~7e-5 absolute): 7x the observed spread, and far below
what any real mistake moves (a wrong rope_ratio, rotary pair or key/value group, one perturbed
weight: >= 1e-3 of the range, usually O(1); see test_a_wrong_network_fails).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from official_fixtures import GLM2, fp32_models, glm2_fixture_module, read_reference
from openllm_hub_chatglm.engine_torch import ChatGLMModel

import openllm_hub

FIXTURE = GLM2
BOUND = 2e-6  # of the reference's logit range (max - min), see the module docstring
CASES = [("chatglm2", "short"), ("chatglm2", "long"), ("chatglm2-32k", "short"), ("chatglm3-32k", "short"),
         ("chatglm3-32k", "long")]


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    return read_reference(FIXTURE)


@pytest.fixture(scope="module")
def models() -> Iterator[dict[str, ChatGLMModel]]:
    with fp32_models(FIXTURE, (c[0] for c in CASES)) as loaded:
        yield loaded


def _compare(ours: np.ndarray, theirs: np.ndarray) -> tuple[float, float]:
    """(max |diff|, the bound in absolute terms)."""
    assert ours.shape == theirs.shape
    return float(np.abs(ours - theirs).max()), BOUND * float(theirs.max() - theirs.min())


def test_fixture_is_what_it_says(reference: dict[str, Any], models: dict[str, ChatGLMModel]) -> None:
    """The checkpoints load as the variants they stand for, the long prompts are long, and the
    rope_ratio cases take the two different code paths."""
    assert {m.spec.variant for m in models.values()} == {"chatglm2", "chatglm3"}
    assert models["chatglm2-32k"].spec.variant == "chatglm2" and models["chatglm2-32k"].spec.rope_ratio == 16
    assert models["chatglm3-32k"].spec.variant == "chatglm3" and models["chatglm3-32k"].spec.rope_ratio == 50
    for name in ("chatglm2", "chatglm3-32k"):
        assert int(reference[f"{name}/long/prompt_len"]) >= 1024
    tf_cfg = json.loads((FIXTURE / "chatglm2-32k" / "transformers" / "config.json").read_text(encoding="utf-8"))
    assert tf_cfg["rope_scaling"] == {"type": "linear", "factor": 16.0}
    tf_cfg = json.loads((FIXTURE / "chatglm3-32k" / "transformers" / "config.json").read_text(encoding="utf-8"))
    assert tf_cfg["rope_theta"] == 500000.0 and "rope_scaling" not in tf_cfg


@pytest.mark.parametrize("name,case", CASES)
def test_logits_equal_transformers_glm(name: str, case: str, reference: dict[str, Any],
                                       models: dict[str, ChatGLMModel]) -> None:
    """Every position's logits (prompt and the reference's 8 greedy tokens, one forward pass)
    within the bound; the greedy token identical at every position."""
    ids = reference[f"{name}/{case}/ids"].tolist()
    theirs = reference[f"{name}/{case}/logits"]
    ours = models[name].logits(ids)
    diff, bound = _compare(ours, theirs)
    assert diff <= bound, f"{name}/{case}: max |logit diff| {diff:.3g} > {bound:.3g}"
    assert (ours.argmax(-1) == theirs.argmax(-1)).all()


@pytest.mark.parametrize("name,case", [c for c in CASES if c[0].startswith("chatglm2")])
def test_greedy_generation_equals_transformers(name: str, case: str, reference: dict[str, Any],
                                               models: dict[str, ChatGLMModel]) -> None:
    """The engine's own generation (KV cache, the long prompt in 512-id chunks) from the
    ChatGLM2 prompt text gives the ids the official tokenizer gives and transformers'
    greedy tokens."""
    model = models[name]
    n = int(reference[f"{name}/{case}/prompt_len"])
    text = str(reference[f"{name}/{case}/text"])
    assert model.tokenize(text) == reference[f"{name}/{case}/ids"][:n].tolist()
    greedy = reference[f"{name}/{case}/greedy"].tolist()
    out = model.generate(text, max_new_tokens=len(greedy), temperature=0.0, repeat_penalty=1.0)
    assert list(out.token_ids) == greedy


@pytest.mark.parametrize("name", ["chatglm2", "chatglm2-32k", "chatglm3-32k"])
def test_fixture_reproduces_with_installed_transformers(name: str, reference: dict[str, Any]) -> None:
    """The installed transformers, configured from the fixture's transformers config.json by
    AutoConfig, still computes the stored logits (so the fixture is not stale)."""
    ref_model = glm2_fixture_module().load_reference(FIXTURE / name)
    for case in ("short", "long"):
        if f"{name}/{case}/ids" not in reference:
            continue
        ids = reference[f"{name}/{case}/ids"].tolist()
        with torch.no_grad():
            live = ref_model(torch.tensor([ids])).logits[0].float().numpy()
        diff, bound = _compare(live, reference[f"{name}/{case}/logits"])
        assert diff <= bound


def _perturbed_weight(model: ChatGLMModel) -> None:
    w = model.net.transformer.encoder.layers[1].self_attention.query_key_value.weight
    w.data[5, 7] += 0.05  # one query weight of the last layer


def _rope_ratio_as_base(model: ChatGLMModel) -> None:
    """ChatGLM3's rope_ratio semantics on a ChatGLM2 model (the mistake the 32k case guards)."""
    rotary = model.net.rotary
    rotary.base, rotary.position_scale = 10000.0 * rotary.position_scale, 1.0
    rotary.cos = rotary.sin = torch.empty(0)


@pytest.mark.parametrize("name,breakage", [("chatglm2", _perturbed_weight), ("chatglm2-32k", _rope_ratio_as_base)])
def test_a_wrong_network_fails(name: str, breakage: Any, reference: dict[str, Any]) -> None:
    """Negative control: the comparison above fails for a network with one weight changed by
    0.05, or with ChatGLM3's rope_ratio rule applied to a ChatGLM2-32k checkpoint."""
    with openllm_hub.load(FIXTURE / name, device="cpu", dtype="fp32") as model:
        assert isinstance(model, ChatGLMModel)
        breakage(model)
        ids = reference[f"{name}/short/ids"].tolist()
        diff, bound = _compare(model.logits(ids), reference[f"{name}/short/logits"])
        assert diff > 10 * bound
