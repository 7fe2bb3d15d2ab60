"""ChatGLM2/3 -> GGUF (llama.cpp ``chatglm`` architecture) and ChatGLM on llama.cpp through
the core's shared engine, checked against our torch engine on the same weights (llama.cpp's
own chatglm graph is the independent implementation).

Bounds, relative to our float32 logit range (measured on these tiny models): f32 1e-5
(observed 1.6e-7: same math in float32, llama.cpp's kernels sum in another order); f16 2e-3
(weights rounded to 11-bit mantissas, observed 2.7e-4); q8_0 3e-2 (8-bit weights and, in
ggml's q8_0 dot product, 8-bit activations; observed 7.3e-3); q4_0 0.25 (4-bit weights on a
random model). Argmax: identical for f32/f16; near-ties may flip at 8 bits (>= 90%) and more
at 4 bits (>= 60%).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from openllm_hub_chatglm.engine_gguf import ChatGLMGGUFModel
from openllm_hub_chatglm.engine_torch import ChatGLMModel

import openllm_hub
from openllm_hub.core.detect import read_gguf_metadata
from openllm_hub.errors import ConversionError, InvalidParameterError

PROMPT = "Once upon a time there was a model 你好, and it told a story:\n1."
BOUNDS = {"f32": 1e-5, "f16": 2e-3, "q8_0": 3e-2}
MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Tell me a story."},
    {"role": "assistant", "content": "Once there was a cat."},
    {"role": "user", "content": "And then?"},
]


def _ours(folder: Path) -> tuple[list[int], np.ndarray]:
    with openllm_hub.load(folder, device="cpu") as model:
        assert isinstance(model, ChatGLMModel)
        ids = model.tokenize(PROMPT)
        return ids, model.logits(ids)


def _rel(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.abs(ours - theirs).max() / (ours.max() - ours.min()))


@pytest.mark.parametrize(("fixture", "variant"), [("v2_dir", "chatglm2"), ("v3_dir", "chatglm3")])
def test_gguf_loads_on_llama_cpp_like_ours(fixture: str, variant: str, request: pytest.FixtureRequest,
                                           make_gguf: Callable[[str, str], Path]) -> None:
    src = request.getfixturevalue(fixture)
    ids, ours = _ours(src)
    for outtype, bound in BOUNDS.items():
        path = make_gguf(fixture, outtype)
        meta = read_gguf_metadata(path)
        assert meta["general.architecture"] == "chatglm" and meta["tokenizer.ggml.pre"] == "chatglm-spm"
        family, det = openllm_hub.detect(path)
        assert family.name == "chatglm" and det.format == "gguf"
        with openllm_hub.load(path, device="cpu", threads=1, kv_cache_type="f32") as model:
            assert isinstance(model, ChatGLMGGUFModel)
            info = model.info
            assert (info.family, info.format, info.engine, info.quantization) == ("chatglm", "gguf", "llama.cpp",
                                                                                  outtype)
            assert info.extra["variant"] == variant and model.default_chat_template == variant
            assert model.tokenize(PROMPT) == ids  # [gMASK] sop + llama.cpp's tokens of the text, like ours
            theirs = model.logits(ids)
        assert _rel(ours, theirs) <= bound, outtype
        agree = float(np.mean(ours.argmax(-1) == theirs.argmax(-1)))
        assert agree == 1.0 if outtype != "q8_0" else agree >= 0.9, outtype


@pytest.mark.parametrize("fixture", ["v2_dir", "v3_dir"])
def test_chat_on_gguf_gives_our_engines_answer(fixture: str, request: pytest.FixtureRequest,
                                               make_gguf: Callable[[str, str], Path]) -> None:
    """On the f32 file (logits within 1.6e-7 of the range) greedy chat picks the same tokens
    as the torch engine: same rendered prompt ids (v3 role tokens included), same stop ids."""
    src = request.getfixturevalue(fixture)
    with openllm_hub.load(make_gguf(fixture, "f32"), device="cpu", threads=1, kv_cache_type="f32") as gg, \
            openllm_hub.load(src, device="cpu") as ours:
        assert gg.eos_token_ids == ours.eos_token_ids
        assert gg.generation_defaults == ours.generation_defaults
        prompt = gg.chat_template().render(MESSAGES)  # type: ignore[arg-type]
        assert gg.tokenize(prompt) == ours.tokenize(prompt)
        a = gg.chat(MESSAGES, max_new_tokens=16, temperature=0.0)
        b = ours.chat(MESSAGES, max_new_tokens=16, temperature=0.0)
        assert a.token_ids == b.token_ids and a.text == b.text and a.finish_reason == b.finish_reason


@pytest.mark.parametrize(("fixture", "outtype"), [("v2_dir", "f32"), ("v3_dir", "f32"), ("v3_dir", "f16")])
def test_convert_verify_runs_both_sides(fixture: str, outtype: str, request: pytest.FixtureRequest,
                                        tmp_path: Path) -> None:
    """convert(verify=True): our torch engine against the written file on llama.cpp."""
    src = request.getfixturevalue(fixture)
    res = openllm_hub.convert(src, tmp_path / "m.gguf", to="gguf", outtype=outtype, verify=True, progress=False)
    assert res.verify is not None and res.verify.passed, res.verify
    assert res.verify.relative_diff <= BOUNDS[outtype]
    if outtype == "f32":
        assert res.verify.greedy_equal and res.verify.argmax_agree == 1.0
    assert res.path.is_file()


def test_quantize_and_load_quantized(v2_dir: Path, make_gguf: Callable[[str, str], Path], tmp_path: Path,
                                     _isolated_cache: Path) -> None:
    """openllm-hub quantize on a ChatGLM GGUF (llama.cpp's quantizer), and load(folder,
    quantize="q4_0"), which must make the same file in the cache (same f16 conversion, same
    deterministic quantizer) once, and reuse it."""
    ids, ours = _ours(v2_dir)
    q4 = openllm_hub.quantize(make_gguf("v2_dir", "f16"), tmp_path / "m-q4_0.gguf", "q4_0", threads=1)
    assert read_gguf_metadata(q4)["general.file_type"] == 2  # LLAMA_FTYPE_MOSTLY_Q4_0
    with openllm_hub.load(q4, device="cpu", threads=1, kv_cache_type="f32") as model:
        explicit = model.logits(ids)
    assert _rel(ours, explicit) <= 0.25
    assert float(np.mean(ours.argmax(-1) == explicit.argmax(-1))) >= 0.6

    with openllm_hub.load(v2_dir, device="cpu", threads=1, quantize="q4_0", kv_cache_type="f32") as model:
        assert isinstance(model, ChatGLMGGUFModel)
        assert (model.info.engine, model.info.quantization) == ("llama.cpp", "q4_0")
        assert model.info.extra["source"] == str(v2_dir)
        cached = Path(model.info.path)
        assert _isolated_cache in cached.parents
        assert model.tokenize(PROMPT) == ids
        np.testing.assert_array_equal(model.logits(ids), explicit)
        out = model.generate(PROMPT, max_new_tokens=6, temperature=0.0)
        assert len(out.token_ids) == 6 or out.finish_reason == "stop"
    made = sorted(_isolated_cache.rglob("*.gguf"))
    stamp = cached.stat().st_mtime_ns
    with openllm_hub.load(v2_dir, device="cpu", threads=1, quantize="q4_0") as again:
        assert Path(again.info.path) == cached
    assert sorted(_isolated_cache.rglob("*.gguf")) == made and cached.stat().st_mtime_ns == stamp


def test_llama_cpp_quantize_option_errors(v1_dir: Path, v2_dir: Path, make_gguf: Callable[[str, str], Path]) -> None:
    with pytest.raises(InvalidParameterError, match="unknown quantization 'q9_9'"):
        openllm_hub.load(v2_dir, device="cpu", quantize="q9_9")
    with pytest.raises(InvalidParameterError, match="no ChatGLM-6B"):
        openllm_hub.load(v1_dir, device="cpu", quantize="q4_0")
    gguf = make_gguf("v2_dir", "f16")
    with pytest.raises(InvalidParameterError, match="does not apply to a GGUF file"):
        openllm_hub.load(gguf, device="cpu", quantize="q4_0")
    with pytest.raises(InvalidParameterError, match="holds chatglm2, not chatglm3"):
        openllm_hub.load(gguf, device="cpu", variant="chatglm3")
    with pytest.raises(InvalidParameterError, match=r"applied by llama\.cpp only"):
        openllm_hub.load(v2_dir, device="cpu", lora=[("adapter.gguf", 1.0)])


def test_gguf_refuses_chatglm6b(v1_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="no ChatGLM-6B"):
        openllm_hub.convert(v1_dir, tmp_path / "v1.gguf", to="gguf", progress=False)
    assert not (tmp_path / "v1.gguf").exists()
