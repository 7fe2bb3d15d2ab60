"""``Model.embed`` on ChatGLM: the final-norm hidden states, checked against computations that do
not use this project's network.

Pooling (the core's, :meth:`Model.embed`): the mean over every id of ``tokenize(text)``, prompt
tokens included: ChatGLM2/3 put ``[gMASK] sop`` before the text, ChatGLM-6B puts ``[gMASK]
<sop>`` after it (so its text attends both ways, as in the model's own prompts).

* ChatGLM2/3 (torch engine, and the GGUF engine on llama.cpp's embedding mode): transformers'
  own ``GlmForCausalLM`` built from a config.json in transformers' format through
  ``AutoConfig`` (``data/official_glm2/make_fixture.load_reference``, see that README for why
  GLM-4's implementation is ChatGLM2/3's architecture). Its ``hidden_states[-1]`` with
  ``output_hidden_states=True`` is the final-norm output (transformers 5 replaces the last
  recorded layer output by ``last_hidden_state``; checked below: equal to ``model.model``'s
  ``last_hidden_state``, and ``lm_head`` of it gives the logits). Both sides float32 on the same
  weights: observed <= 1.2e-6 absolute per position (values up to 4.5) for the torch engine,
  <= 1.6e-6 for llama.cpp; bound 1e-5.
* ChatGLM-6B: transformers has no implementation; the official ``modeling_chatglm.py`` logits
  of ``data/official_glm1`` (see its README) are the reference. Its output layer is the tied
  word embedding matrix ``E`` (640 x 64), so ``logits = h @ E^T`` with ``E`` read here straight
  from the checkpoint's ``model.safetensors``. ``E`` has full column rank (condition number
  1.8), so the logits determine ``h`` uniquely: the least-squares ``h`` recovered from the
  official logits is compared too. Bounds: the fixture's logit bound (1e-6 of the logit range;
  observed 1.8e-7) and 1e-5 absolute for recovered ``h`` (observed 1.5e-6 on values up to 9.2).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from official_fixtures import GLM1, GLM2, fp32_models, glm2_fixture_module, load_fp32, read_reference
from openllm_hub_chatglm.engine_torch import ChatGLMModel

import openllm_hub

FIX1, FIX2 = GLM1, GLM2
HIDDEN_BOUND = 1e-5  # absolute, per hidden value (see the module docstring)
LOGIT_BOUND = 1e-6  # of the official logit range, as test_official_parity_glm1
V2_CASES = [("chatglm2", "short"), ("chatglm2", "long"), ("chatglm2-32k", "short"), ("chatglm3-32k", "short"),
            ("chatglm3-32k", "long")]
#: a text of our own for ChatGLM3 (its fixture stores ids only); >= 1,024 ids with the prompt
LONG_TEXT = "The fox jumped over the fence, 你好世界. Then it ran home and slept until morning. " * 16


@pytest.fixture(scope="module")
def ref2() -> dict[str, Any]:
    return read_reference(FIX2)


@pytest.fixture(scope="module")
def transformers_glm() -> Iterator[dict[str, Any]]:
    """name -> transformers' GlmForCausalLM of that fixture checkpoint (fp32, built once)."""
    module, cache = glm2_fixture_module(), {}

    def get(name: str) -> Any:
        if name not in cache:
            cache[name] = module.load_reference(FIX2 / name)
        return cache[name]

    yield get  # type: ignore[misc]


def last_hidden(tf: Any, ids: list[int]) -> np.ndarray:
    """transformers' last entry of ``hidden_states`` (the final-norm output), float64."""
    with torch.no_grad():
        out = tf(torch.tensor([ids]), output_hidden_states=True)
    result: np.ndarray = out.hidden_states[-1][0].double().numpy()
    return result


@pytest.fixture(scope="module")
def v2_models() -> Iterator[dict[str, ChatGLMModel]]:
    with fp32_models(FIX2, (c[0] for c in V2_CASES)) as loaded:
        yield loaded


def test_transformers_last_hidden_state_is_what_its_output_layer_reads(transformers_glm: Any,
                                                                       ref2: dict[str, Any]) -> None:
    """Which element of ``hidden_states`` the comparison uses: the last one is the decoder's
    ``last_hidden_state`` (after the final RMSNorm), and ``lm_head`` of it is the logits."""
    tf = transformers_glm("chatglm2")
    ids = torch.tensor([ref2["chatglm2/short/ids"].tolist()])
    with torch.no_grad():
        out = tf(ids, output_hidden_states=True)
        assert len(out.hidden_states) == tf.config.num_hidden_layers + 1
        assert torch.equal(out.hidden_states[-1], tf.model(ids).last_hidden_state)
        assert torch.equal(tf.lm_head(out.hidden_states[-1]), out.logits)


@pytest.mark.parametrize("name,case", V2_CASES)
def test_v2_v3_hidden_states_equal_transformers(name: str, case: str, ref2: dict[str, Any],
                                                v2_models: dict[str, ChatGLMModel], transformers_glm: Any) -> None:
    """Every position (prompt and 8 generated ids; the long cases >= 1,024 ids)."""
    ids = ref2[f"{name}/{case}/ids"].tolist()
    ours = v2_models[name]._hidden_states(ids)
    theirs = last_hidden(transformers_glm(name), ids)
    assert ours.shape == theirs.shape == (len(ids), 64)
    assert np.abs(ours - theirs).max() <= HIDDEN_BOUND


def _texts(ref2: dict[str, Any]) -> dict[str, list[str]]:
    return {"chatglm2": ["a", str(ref2["chatglm2/short/text"]), str(ref2["chatglm2/long/text"])],
            "chatglm3-32k": ["你好", LONG_TEXT]}


@pytest.mark.parametrize("name", ["chatglm2", "chatglm3-32k"])
def test_v2_v3_embed_equals_transformers_mean(name: str, ref2: dict[str, Any], v2_models: dict[str, ChatGLMModel],
                                              transformers_glm: Any) -> None:
    model, texts = v2_models[name], _texts(ref2)[name]
    vectors = model.embed(texts)
    lengths = []
    for text, vec in zip(texts, vectors, strict=True):
        ids = model.tokenize(text)
        assert ids[:2] == [model.tokenizer.gmask_id, model.tokenizer.sop_id]  # pooled too
        lengths.append(len(ids))
        assert np.abs(np.asarray(vec) - last_hidden(transformers_glm(name), ids).mean(0)).max() <= HIDDEN_BOUND
    assert max(lengths) >= 1024


@pytest.mark.parametrize("name", ["chatglm2", "chatglm3-32k"])
def test_gguf_embed_equals_transformers_mean(name: str, ref2: dict[str, Any], transformers_glm: Any,
                                             tmp_path_factory: pytest.TempPathFactory) -> None:
    """The GGUF engine (llama.cpp's ``chatglm`` architecture, embedding mode) on the f32 GGUF
    converted from the same checkpoint."""
    from openllm_hub_chatglm.engine_gguf import ChatGLMGGUFModel

    gguf = openllm_hub.convert(FIX2 / name, tmp_path_factory.mktemp("gguf") / f"{name}.gguf", to="gguf",
                               outtype="f32", progress=False).path
    texts = _texts(ref2)[name]
    with openllm_hub.load(gguf, device="cpu", threads=1, kv_cache_type="f32") as model:
        assert isinstance(model, ChatGLMGGUFModel)
        vectors = model.embed(texts)
        for text, vec in zip(texts, vectors, strict=True):
            theirs = last_hidden(transformers_glm(name), model.tokenize(text))
            assert np.abs(np.asarray(vec) - theirs.mean(0)).max() <= HIDDEN_BOUND
        ids = model.tokenize(texts[-1])
        assert len(ids) >= 1024
        assert np.abs(model._hidden_states(ids) - last_hidden(transformers_glm(name), ids)).max() <= HIDDEN_BOUND


# ---- ChatGLM-6B: the official logits through the tied output layer ------------------------------
@pytest.fixture(scope="module")
def ref1() -> dict[str, Any]:
    return read_reference(FIX1)


@pytest.fixture(scope="module")
def v1_model() -> Iterator[ChatGLMModel]:
    with load_fp32(FIX1 / "chatglm") as model:
        yield model


@pytest.fixture(scope="module")
def word_embeddings() -> np.ndarray:
    """``E`` straight from the checkpoint file (fp16 there, widened), not through the loader."""
    from safetensors.numpy import load_file

    e: np.ndarray = load_file(str(FIX1 / "chatglm" / "model.safetensors"))["transformer.word_embeddings.weight"]
    assert e.shape == (640, 64)
    return e.astype(np.float64)


@pytest.mark.parametrize("case", ["short", "history", "long", "mask"])
def test_v1_hidden_states_through_the_tied_output_layer_equal_official_logits(
        case: str, ref1: dict[str, Any], v1_model: ChatGLMModel, word_embeddings: np.ndarray) -> None:
    ids = ref1[f"{case}/ids"].tolist()
    official = ref1[f"{case}/logits"].astype(np.float64)
    ours = v1_model._hidden_states(ids).astype(np.float64)
    assert ours.shape == (len(ids), 64)
    bound = LOGIT_BOUND * float(official.max() - official.min())
    assert np.abs(ours @ word_embeddings.T - official).max() <= bound
    # E has full column rank: the official logits determine the hidden states; compare those
    assert np.linalg.matrix_rank(word_embeddings) == 64 and np.linalg.cond(word_embeddings) < 10
    recovered = np.linalg.lstsq(word_embeddings, official.T, rcond=None)[0].T
    assert np.abs(ours - recovered).max() <= HIDDEN_BOUND


def test_v1_embed_through_the_tied_output_layer_equals_mean_official_logits(
        ref1: dict[str, Any], v1_model: ChatGLMModel, word_embeddings: np.ndarray) -> None:
    """``embed(text) @ E^T`` is the mean of the official prompt logits (the map is linear);
    the prompt is ``tokenize(text)``: the text, then ``[gMASK] <sop>``."""
    cases = ["short", "history", "long"]
    texts = [str(ref1[f"{c}/text"]) for c in cases]
    vectors = np.asarray(v1_model.embed(texts))
    for case, text, vec in zip(cases, texts, vectors, strict=True):
        n = int(ref1[f"{case}/prompt_len"])
        ids = v1_model.tokenize(text)
        assert ids == ref1[f"{case}/ids"][:n].tolist()
        assert ids[-2:] == [v1_model.tokenizer.gmask_id, v1_model.tokenizer.sop_id]
        official = ref1[f"{case}/logits"][:n].astype(np.float64)
        bound = LOGIT_BOUND * float(official.max() - official.min())
        assert np.abs(vec @ word_embeddings.T - official.mean(0)).max() <= bound
    assert len(v1_model.tokenize(texts[-1])) >= 1024


def test_a_wrong_final_norm_fails(ref1: dict[str, Any], word_embeddings: np.ndarray) -> None:
    """Negative control: one final layer-norm weight changed by 0.05 fails the comparison."""
    with openllm_hub.load(FIX1 / "chatglm", device="cpu", dtype="fp32") as model:
        assert isinstance(model, ChatGLMModel)
        final: Any = model.net.transformer.final_layernorm  # type: ignore[union-attr]
        final.weight.data[3] += 0.05
        ids = ref1["short/ids"].tolist()
        official = ref1["short/logits"].astype(np.float64)
        diff = np.abs(model._hidden_states(ids).astype(np.float64) @ word_embeddings.T - official).max()
        assert diff > 10 * LOGIT_BOUND * float(official.max() - official.min())


@pytest.mark.parametrize("name", ["chatglm2", "chatglm3-32k"])
def test_embedding_inside_a_running_batch_changes_no_sequence(name: str, v2_models: dict[str, ChatGLMModel]) -> None:
    from openllm_hub.testing import check_embedding_between_batch_steps_changes_no_sequence

    check_embedding_between_batch_steps_changes_no_sequence(v2_models[name])
