"""ChatGLM-6B (v1) against the official THUDM/chatglm-6b modeling code.

The fixture (``data/official_glm1/``, made by its ``make_fixture.py``, see its README) holds a
tiny checkpoint in the official ChatGLM-6B layout (``ice_text.model``, config.json,
tokenizer_config.json, fp16 weights under the official names), and what the official
``modeling_chatglm.py`` / ``tokenization_chatglm.py`` (snapshot 619e736c, transformers 4.27.1,
torch CPU, ``.float()``) computed on it: the ids of prompts built as the official ``chat()``
builds them (no history; two rounds; a multi-round chat of >= 1,024 ids), a ``[MASK]`` blank
infilling prompt (no ``[gMASK]``: the model's other position rule), the fp32 logits of one
forward pass over prompt + 8 greedy tokens, and the official ``generate(do_sample=False)``.

Bound: both sides run float32 on the same fp16-representable weights; they differ in operation
order (per-head fused qkv split, attention-score scaling by ``layer_id + 1`` and back, GELU
written as ``0.5x(1 + tanh(0.7978845608 x (1 + 0.044715 x^2)))`` vs torch's tanh GELU, the
rotary products), so the logits agree to float32 rounding: observed <= 1.4e-7 of the logit
range (about 6e-6 absolute on a range of 38-49). The bound is 1e-6 of the range (4-5e-5
absolute): 7x the observed spread, below the smallest top-1 margin of any row (3e-4
absolute), and far below what a real mistake moves (one weight changed by 0.05: 2.4e-4 of
the range; 1D instead of 2D positions: 3.5e-3; the [MASK] position ignored: 7e-3; see
test_a_wrong_network_fails).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from official_fixtures import GLM1, load_fp32, read_reference
from openllm_hub_chatglm import engine_torch
from openllm_hub_chatglm.engine_torch import ChatGLMModel
from openllm_hub_chatglm.spec import GLMSpec

import openllm_hub

FIXTURE = GLM1
CHECKPOINT = FIXTURE / "chatglm"
BOUND = 1e-6  # of the reference's logit range (max - min), see the module docstring
CASES = ["short", "history", "long", "mask"]
CHAT_CASES = ["short", "history", "long"]


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    return read_reference(FIXTURE)


@pytest.fixture(scope="module")
def model() -> Iterator[ChatGLMModel]:
    with load_fp32(CHECKPOINT) as loaded:
        yield loaded


def _compare(ours: np.ndarray, theirs: np.ndarray) -> tuple[float, float]:
    """(max |diff|, the bound in absolute terms)."""
    assert ours.shape == theirs.shape
    return float(np.abs(ours - theirs).max()), BOUND * float(theirs.max() - theirs.min())


def test_fixture_is_what_it_says(reference: dict[str, Any], model: ChatGLMModel) -> None:
    """A ChatGLM-6B checkpoint; the chat prompts end with ``[gMASK] <sop>``, the long one has
    >= 1,024 ids and history rounds, the mask prompt has ``[MASK]`` and no ``[gMASK]``; the
    stored output layer is the word embedding matrix (as the official model ties them)."""
    from safetensors.torch import load_file

    spec = model.spec
    assert spec.variant == "chatglm"
    cfg = json.loads((CHECKPOINT / "config.json").read_text(encoding="utf-8"))
    assert cfg["position_encoding_2d"] is True and "tie_word_embeddings" not in cfg
    for case in CHAT_CASES:
        n = int(reference[f"{case}/prompt_len"])
        assert reference[f"{case}/ids"][n - 2:n].tolist() == [spec.gmask_token_id, spec.bos_token_id]
    assert int(reference["long/prompt_len"]) >= 1024 and "[Round 3]" in str(reference["long/text"])
    mask = reference["mask/ids"][: int(reference["mask/prompt_len"])].tolist()
    assert spec.mask_token_id in mask and spec.gmask_token_id not in mask and mask[-1] == spec.bos_token_id
    sd = load_file(str(CHECKPOINT / "model.safetensors"))
    assert torch.equal(sd["lm_head.weight"], sd["transformer.word_embeddings.weight"])


@pytest.mark.parametrize("case", CASES)
def test_logits_equal_official_code(case: str, reference: dict[str, Any], model: ChatGLMModel) -> None:
    """Every position's logits (prompt and the official 8 greedy tokens, one forward pass)
    within the bound; the argmax identical everywhere, so teacher-forced greedy decoding
    gives the official greedy tokens (for the [MASK] prompt too)."""
    ids = reference[f"{case}/ids"].tolist()
    theirs = reference[f"{case}/logits"]
    ours = model.logits(ids)
    diff, bound = _compare(ours, theirs)
    assert diff <= bound, f"{case}: max |logit diff| {diff:.3g} > {bound:.3g}"
    assert (ours.argmax(-1) == theirs.argmax(-1)).all()
    n = int(reference[f"{case}/prompt_len"])
    assert ours.argmax(-1)[n - 1:-1].tolist() == reference[f"{case}/greedy"].tolist()


@pytest.mark.parametrize("case", CHAT_CASES)
def test_tokenize_and_greedy_generation_equal_official(case: str, reference: dict[str, Any],
                                                       model: ChatGLMModel) -> None:
    """The official chat() prompt text gives the official tokenizer's ids, and the engine's
    own generation (KV cache, 2D positions of generated tokens) the official greedy tokens."""
    n = int(reference[f"{case}/prompt_len"])
    text = str(reference[f"{case}/text"])
    assert model.tokenize(text) == reference[f"{case}/ids"][:n].tolist()
    greedy = reference[f"{case}/greedy"].tolist()
    out = model.generate(text, max_new_tokens=len(greedy), temperature=0.0, repeat_penalty=1.0)
    assert list(out.token_ids) == greedy


@pytest.mark.parametrize("case", CHAT_CASES)
def test_tokenizer_with_the_image_token_offset(case: str, reference: dict[str, Any], tmp_path: Path) -> None:
    """The older releases' tokenizer_config.json has no ``num_image_tokens`` (the official
    default: 20,000 image ids before the text ids): the project's tokenizer gives the official
    tokenizer's ids for that configuration too."""
    from openllm_hub_chatglm.tokenizer import load_tokenizer

    folder = tmp_path / "chatglm"
    shutil.copytree(CHECKPOINT, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    cfg = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    del cfg["num_image_tokens"]
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg), encoding="utf-8")
    ids = load_tokenizer(folder, "chatglm").encode(str(reference[f"{case}/text"]))
    assert ids == reference[f"offset20000/{case}/ids"].tolist()


def test_output_layer_is_the_word_embedding(reference: dict[str, Any], tmp_path: Path) -> None:
    """As the official model (tied output layer): a stored ``lm_head.weight`` that differs
    from the word embeddings changes nothing; the logits still equal the official ones."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "chatglm"
    shutil.copytree(CHECKPOINT, folder)
    sd = load_file(str(folder / "model.safetensors"))
    sd["lm_head.weight"] = torch.randn(sd["lm_head.weight"].shape, generator=torch.Generator().manual_seed(1)).half()
    save_file(sd, str(folder / "model.safetensors"))
    with openllm_hub.load(folder, device="cpu", dtype="fp32") as model:
        diff, bound = _compare(model.logits(reference["short/ids"].tolist()), reference["short/logits"])
        assert diff <= bound


def _perturbed_weight(model: ChatGLMModel, monkeypatch: pytest.MonkeyPatch) -> None:
    w = model.net.transformer.layers[1].attention.query_key_value.weight
    w.data[5, 7] += 0.05  # one query weight of the last layer


def _one_dimensional_positions(model: ChatGLMModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain positions 0..n-1 and no block positions (what a 1D rotary would use)."""
    def flat(prompt: list[int], spec: GLMSpec, total: int | None = None) -> tuple[list[int], list[int], int]:
        pos, block, ctx = real(prompt, spec, total)
        return list(range(len(pos))), [0] * len(block), ctx

    real = engine_torch.position_ids
    monkeypatch.setattr(engine_torch, "position_ids", flat)


def _mask_position_ignored(model: ChatGLMModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """The [MASK] prompt's generation positions taken as 0..n-1 instead of the mask position."""
    def no_mask(prompt: list[int], spec: GLMSpec, total: int | None = None) -> tuple[list[int], list[int], int]:
        pos, block, ctx = real(prompt, spec, total)
        return [*pos[:ctx], *range(ctx, len(pos))], block, ctx

    real = engine_torch.position_ids
    monkeypatch.setattr(engine_torch, "position_ids", no_mask)


@pytest.mark.parametrize("case,breakage", [("short", _perturbed_weight), ("long", _one_dimensional_positions),
                                           ("mask", _mask_position_ignored)])
def test_a_wrong_network_fails(case: str, breakage: Callable[[ChatGLMModel, pytest.MonkeyPatch], None],
                               reference: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Negative control: the comparison above fails for a network with one weight changed by
    0.05, with 1D positions instead of the 2D ones, or with the mask position ignored."""
    with openllm_hub.load(CHECKPOINT, device="cpu", dtype="fp32") as model:
        assert isinstance(model, ChatGLMModel)
        breakage(model, monkeypatch)
        ids = reference[f"{case}/ids"].tolist()
        diff, bound = _compare(model.logits(ids), reference[f"{case}/logits"])
        assert diff > 10 * bound
