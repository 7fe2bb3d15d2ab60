"""ChatGLM2/3 -> GGUF (llama.cpp ``chatglm`` architecture), checked by running the file in
llama.cpp (the installed llama-cpp-python) against our torch engine on the same weights."""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from openllm_hub_chatglm.engine import ChatGLMModel

import openllm_hub
from openllm_hub.core.detect import read_gguf_metadata
from openllm_hub.errors import ConversionError, InvalidParameterError

PROMPT = "Once upon a time there was a model 你好, and it told a story:\n1."
GGML_TYPE_F32 = 0


@contextlib.contextmanager
def _no_weight_repacking() -> Iterator[None]:
    """Load with ``use_extra_bufts=False``: llama.cpp 0.3.36's AMX path segfaults on quantized
    matrices on CPUs that report AMX without the kernel granting it (this machine); the llama
    plugin works around it the same way. Repacking changes only the memory layout."""
    import llama_cpp
    import llama_cpp.llama as llama_mod

    original = llama_cpp.llama_model_default_params

    def params() -> Any:
        p = original()
        p.use_extra_bufts = False
        return p

    llama_mod.llama_cpp.llama_model_default_params = params  # type: ignore[attr-defined]
    try:
        yield
    finally:
        llama_mod.llama_cpp.llama_model_default_params = original  # type: ignore[attr-defined]


def _llama_cpp_logits(path: Path, ids: list[int]) -> tuple[np.ndarray, list[int]]:
    """llama.cpp's logits for ``ids`` (float32 KV cache) and its own tokenization of PROMPT."""
    import llama_cpp

    with _no_weight_repacking():
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=128, n_batch=128, logits_all=True, verbose=False,
                              n_threads=1, n_threads_batch=1, type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32)
    try:
        llm.reset()
        llm.eval(ids)
        logits = np.array(llm.scores[: len(ids)], dtype=np.float32)
        tokens = llm.tokenize(PROMPT.encode(), add_bos=False, special=False)
    finally:
        llm.close()
    return logits, tokens


@pytest.mark.parametrize("fixture", ["v2_dir", "v3_dir"])
def test_gguf_runs_in_llama_cpp_like_ours(fixture: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """Bounds, relative to our float32 logit range: f32 1e-5 (observed 2e-7: same math in
    float32, llama.cpp's kernels sum in another order); f16 2e-3 (weights rounded to 11-bit
    mantissas, observed 2.6e-4); q8_0 3e-2 (8-bit weights and, in ggml's q8_0 dot product,
    8-bit activations; observed 7e-3). Argmax: identical for f32/f16, >= 90% for q8_0."""
    src = request.getfixturevalue(fixture)
    with openllm_hub.load(src, device="cpu") as model:
        assert isinstance(model, ChatGLMModel)
        ids = model.tokenize(PROMPT)
        ours = model.logits(ids)
        spec = model.spec
    span = ours.max() - ours.min()
    for outtype, bound in (("f32", 1e-5), ("f16", 2e-3), ("q8_0", 3e-2)):
        dst = openllm_hub.convert(src, tmp_path / f"m-{outtype}.gguf", to="gguf", outtype=outtype, progress=False).path
        meta = read_gguf_metadata(dst)
        assert meta["general.architecture"] == "chatglm"
        assert meta["chatglm.rope.dimension_count"] == spec.head_dim // 2
        assert meta["chatglm.attention.head_count_kv"] == spec.num_kv_heads
        assert meta["tokenizer.ggml.pre"] == "chatglm-spm"
        theirs, tokens = _llama_cpp_logits(dst, ids)
        assert np.abs(ours - theirs).max() <= bound * span, outtype
        agree = np.mean(ours.argmax(-1) == theirs.argmax(-1))
        assert agree == 1.0 if outtype != "q8_0" else agree >= 0.9, outtype  # near-ties may flip at 8 bits
        if outtype == "f32":
            assert tokens == ids[2:]  # llama.cpp's tokenizer on the GGUF vocabulary agrees with ours
    family, det = openllm_hub.detect(dst)
    assert family.name == "chatglm" and det.format == "gguf"
    with pytest.raises(InvalidParameterError, match=r"shared llama\.cpp engine"):
        openllm_hub.load(dst, device="cpu")


def test_llama_cpp_quantizes_the_converted_file(v2_dir: Path, tmp_path: Path) -> None:
    """llama.cpp's own quantizer takes our f16 GGUF to q4_0 and runs it (bound: 25% of the
    logit range for 4-bit weights on a random model; argmax agreement >= 60%)."""
    import llama_cpp

    f16 = openllm_hub.convert(v2_dir, tmp_path / "m-f16.gguf", to="gguf", outtype="f16", progress=False).path
    q4 = tmp_path / "m-q4_0.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
    params.nthread = 1
    assert llama_cpp.llama_model_quantize(str(f16).encode(), str(q4).encode(), ctypes.byref(params)) == 0
    with openllm_hub.load(v2_dir, device="cpu") as model:
        ids = model.tokenize(PROMPT)
        ours = model.logits(ids)
    theirs, _ = _llama_cpp_logits(q4, ids)
    assert np.abs(ours - theirs).max() <= 0.25 * (ours.max() - ours.min())
    assert np.mean(ours.argmax(-1) == theirs.argmax(-1)) >= 0.6


def test_gguf_refuses_chatglm6b(v1_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="no ChatGLM-6B"):
        openllm_hub.convert(v1_dir, tmp_path / "v1.gguf", to="gguf", progress=False)
    assert not (tmp_path / "v1.gguf").exists()
