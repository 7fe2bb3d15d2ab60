"""``Model.embed``: mean-pooled last hidden states, checked against transformers on the same weights.

The pooling (see ``Model.embed``): the mean, over every token of ``tokenize(text)`` (BOS
included), of the decoder's last hidden states after the final norm, optionally scaled to
unit L2 length. The independent computation is transformers' ``LlamaModel`` (the decoder
without the output layer) run on the tiny HF LLaMA folder, its ``last_hidden_state``
mean-pooled in numpy. Both engines are compared with it: transformers through the SDK
(same library, same fp32 weights: within 1e-6) and llama.cpp's embedding mode on the f32
GGUF converted from that folder (other kernels, same numbers to fp32 rounding: measured
within 1.1e-6 on values up to 2.7; held to 1e-5). A 1,024-token text: exactly equal on
transformers, 6.0e-7 on llama.cpp.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

import openllm_hub
from openllm_hub.core.model import Model
from openllm_hub.errors import InvalidParameterError

TEXTS = ["Hello world", "a", "The quick brown fox jumps over the lazy dog. " * 6, "Ünïcödé 文字 🦊"]


@pytest.fixture(scope="module")
def transformers_mean(tiny_llama: tuple[Path, Path]) -> Iterator[object]:
    """``ids -> mean of LlamaModel's last_hidden_state`` on the tiny folder (fp32, CPU)."""
    import torch
    from transformers import LlamaModel

    from openllm_hub.engines.hf_quiet import hf_quiet

    with hf_quiet():
        ref = LlamaModel.from_pretrained(tiny_llama[0], dtype=torch.float32)
    ref.eval()  # type: ignore[no-untyped-call]

    def mean(ids: list[int]) -> npt.NDArray[np.float64]:
        with torch.inference_mode():
            hidden = ref(input_ids=torch.tensor([ids])).last_hidden_state[0]
        out: npt.NDArray[np.float64] = hidden.double().mean(0).numpy()
        return out

    yield mean


@pytest.fixture(scope="module", params=["transformers", "llama.cpp"])
def engine(request: pytest.FixtureRequest, tiny_llama: tuple[Path, Path]) -> Iterator[tuple[Model, float]]:
    if request.param == "transformers":
        m, bound = openllm_hub.load(tiny_llama[0], device="cpu", threads=1), 1e-6
    else:
        m, bound = openllm_hub.load(tiny_llama[1], device="cpu", threads=1, kv_cache_type="f32"), 1e-5
    with m:
        yield m, bound


def test_embeddings_equal_transformers_mean_pooled_hidden_states(engine: tuple[Model, float],
                                                                 transformers_mean: object) -> None:
    model, bound = engine
    vectors = model.embed(TEXTS)
    assert len(vectors) == len(TEXTS)
    for text, vec in zip(TEXTS, vectors, strict=True):
        ref = transformers_mean(model.tokenize(text))  # type: ignore[operator]
        assert len(vec) == ref.shape[0]
        assert np.abs(np.asarray(vec) - ref).max() <= bound


def test_embedding_of_a_long_text_equals_transformers(engine: tuple[Model, float], transformers_mean: object) -> None:
    """A >= 1,024-token text (positions far out, where rotary and cache bugs show; llama.cpp
    reads it in several ubatches), within the same bound."""
    from openllm_hub.testing import long_prompt

    model, bound = engine
    text = long_prompt(model)
    ids = model.tokenize(text)
    assert len(ids) >= 1024
    (vec,) = model.embed([text])
    assert np.abs(np.asarray(vec) - transformers_mean(ids)).max() <= bound  # type: ignore[operator]


def test_normalize_gives_unit_vectors_in_the_same_direction(engine: tuple[Model, float]) -> None:
    model, _ = engine
    raw = np.asarray(model.embed(TEXTS))
    unit = np.asarray(model.embed(TEXTS, normalize=True))
    assert np.allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-12)
    assert np.allclose(unit, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-12)


def test_embedding_leaves_generation_unchanged(engine: tuple[Model, float]) -> None:
    model, _ = engine
    before = model.generate("Once upon a time", max_new_tokens=10, temperature=0.0)
    model.embed(["something else entirely"])
    after = model.generate("Once upon a time", max_new_tokens=10, temperature=0.0)
    assert after.token_ids == before.token_ids


def test_embedding_inside_a_running_batch_changes_no_sequence(engine: tuple[Model, float]) -> None:
    from openllm_hub.testing import check_embedding_between_batch_steps_changes_no_sequence

    check_embedding_between_batch_steps_changes_no_sequence(engine[0])


def test_embedding_bad_input(engine: tuple[Model, float]) -> None:
    model, _ = engine
    with pytest.raises(InvalidParameterError, match="list of strings"):
        model.embed("one string")
    with pytest.raises(InvalidParameterError, match=r"texts\[1\]"):
        model.embed(["fine", 3])  # type: ignore[list-item]
    ctx = model.info.context_length
    assert ctx is not None
    with pytest.raises(InvalidParameterError, match="context"):
        model.embed(["word " * (ctx + 10)])
    assert model.embed([]) == []


def copy_with_pooling(src: Path, dst: Path, pooling: int) -> Path:
    """``src`` rewritten with ``llama.pooling_type`` set, as an embedding model's GGUF declares it."""
    import gguf

    reader = gguf.GGUFReader(src)
    writer = gguf.GGUFWriter(dst, "llama")
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        kind = field.types[0]
        if kind == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(field.name, field.contents(), kind, sub_type=field.types[-1])
        else:
            writer.add_key_value(field.name, field.contents(), kind)
    writer.add_uint32("llama.pooling_type", pooling)
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, np.asarray(tensor.data), raw_dtype=tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


def test_a_gguf_with_its_own_pooling_gets_llama_cpps_pooled_vector(tiny_llama: tuple[Path, Path],
                                                                   tmp_path: Path) -> None:
    """llama.pooling_type=1 (mean): llama.cpp pools (llama_get_embeddings_seq), one row per text,
    equal to the SDK's own mean over the per-token states of the plain GGUF."""
    pooled = copy_with_pooling(tiny_llama[1], tmp_path / "pooled.gguf", 1)
    with openllm_hub.load(tiny_llama[1], device="cpu", threads=1, kv_cache_type="f32") as plain:
        want = np.asarray(plain.embed(TEXTS))
    with openllm_hub.load(pooled, device="cpu", threads=1, kv_cache_type="f32") as m:
        assert m._hidden_states(m.tokenize(TEXTS[0])).shape[0] == 1
        got = np.asarray(m.embed(TEXTS))
    assert np.abs(got - want).max() <= 1e-6


def test_an_engine_that_cannot_embed_says_so(bigram: Model) -> None:
    with pytest.raises(InvalidParameterError, match="cannot compute embeddings"):
        bigram.embed(["hello"])
