"""llama.cpp's quantizer through ``openllm_hub.quantize``: every offered type writes a file
that loads and generates, whose tensors have the sizes their types say, and whose block
weights average the bits per weight the type promises.

The model has hidden size 256 and FFN 768 so that K-quant super-blocks (256 values) fit
every row; with narrower rows llama.cpp silently falls back to legacy types.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

import openllm_hub
from openllm_hub.core.convert import VERIFY_PROMPT
from openllm_hub.engines.llama_cpp_quantize import QUANT_FTYPES, QUANT_TYPES
from openllm_hub.errors import InvalidParameterError

TensorInfos = Callable[[Path], Any]

KW = {"hidden_size": 256, "intermediate_size": 768, "num_heads": 4, "num_kv_heads": 2, "tie_word_embeddings": True}

#: Per scheme: the ggml types llama.cpp may give the weights of the transformer blocks, and
#: the range of their average bits per weight. Legacy types and f16/bf16 use one type
#: everywhere, so the average is exact. The K "mixes" (llama.cpp's llama_tensor_get_type)
#: keep most weights at the base type and promote sensitive ones (attn_v, ffn_down) to a
#: wider K type; the range runs from the base type's bits to the widest type allowed.
_BPW = {name: gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name]] for name in (
    "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "F16", "BF16")}


def bpw(type_name: str) -> float:
    block, size = _BPW[type_name]
    return size * 8 / block


EXPECTED: dict[str, tuple[set[str], float, float]] = {
    "q4_0": ({"Q4_0"}, bpw("Q4_0"), bpw("Q4_0")),
    "q4_1": ({"Q4_1"}, bpw("Q4_1"), bpw("Q4_1")),
    "q5_0": ({"Q5_0"}, bpw("Q5_0"), bpw("Q5_0")),
    "q5_1": ({"Q5_1"}, bpw("Q5_1"), bpw("Q5_1")),
    "q8_0": ({"Q8_0"}, bpw("Q8_0"), bpw("Q8_0")),
    "q2_K": ({"Q2_K", "Q3_K", "Q4_K"}, bpw("Q2_K"), bpw("Q4_K")),
    "q3_K_S": ({"Q3_K", "Q4_K"}, bpw("Q3_K"), bpw("Q4_K")),
    "q3_K_M": ({"Q3_K", "Q4_K", "Q5_K"}, bpw("Q3_K"), bpw("Q5_K")),
    "q3_K_L": ({"Q3_K", "Q4_K", "Q5_K"}, bpw("Q3_K"), bpw("Q5_K")),
    "q4_K_S": ({"Q4_K", "Q5_K"}, bpw("Q4_K"), bpw("Q5_K")),
    "q4_K_M": ({"Q4_K", "Q5_K", "Q6_K"}, bpw("Q4_K"), bpw("Q6_K")),
    "q5_K_S": ({"Q5_K", "Q6_K"}, bpw("Q5_K"), bpw("Q6_K")),
    "q5_K_M": ({"Q5_K", "Q6_K"}, bpw("Q5_K"), bpw("Q6_K")),
    "q6_K": ({"Q6_K"}, bpw("Q6_K"), bpw("Q6_K")),
    "f16": ({"F16"}, 16.0, 16.0),
    "bf16": ({"BF16"}, 16.0, 16.0),
}


@pytest.fixture(scope="module")
def source(tiny_gguf_factory: Callable[..., Path]) -> Path:
    return tiny_gguf_factory("f32", **KW)


@pytest.fixture(scope="module")
def quantized(source: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out_dir = tmp_path_factory.mktemp("quantized")
    return {q: openllm_hub.quantize(source, out_dir / f"tiny-{q}.gguf", q, threads=1) for q in QUANT_TYPES}


def test_every_offered_type_maps_to_llama_cpp() -> None:
    import llama_cpp

    assert set(QUANT_TYPES) == set(QUANT_FTYPES) == set(EXPECTED)
    for name in QUANT_FTYPES.values():
        assert isinstance(getattr(llama_cpp, name), int)


@pytest.mark.parametrize("scheme", QUANT_TYPES)
def test_sizes_fit_bits_per_weight(scheme: str, quantized: dict[str, Path], gguf_tensor_infos: TensorInfos) -> None:
    path = quantized[scheme]
    infos, start, alignment = gguf_tensor_infos(path)
    size = path.stat().st_size
    infos.sort(key=lambda t: t[3])
    ends = [t[3] for t in infos[1:]] + [size - start]
    expected_total = 0
    for (name, dims, ttype, offset), end in zip(infos, ends):
        block, block_bytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ttype)]
        n = int(np.prod(dims))
        assert n % block == 0, name
        want = n // block * block_bytes
        # each tensor's bytes are what its type and element count say, plus < alignment padding
        assert 0 <= (end - offset) - want < alignment, (name, end - offset, want)
        expected_total += want
    assert start + expected_total <= size < start + expected_total + alignment * len(infos)

    types, lo, hi = EXPECTED[scheme]
    block_weights = [(dims, gguf.GGMLQuantizationType(t).name) for name, dims, t, _ in infos
                     if name.startswith("blk.") and len(dims) == 2]
    assert {t for _, t in block_weights} <= types
    elements = sum(int(np.prod(d)) for d, _ in block_weights)
    bits = sum(int(np.prod(d)) * bpw(t) for d, t in block_weights)
    # exact for single-type schemes; within the mix's range for K mixes (float sums: 1e-9)
    assert lo - 1e-9 <= bits / elements <= hi + 1e-9, bits / elements
    norms = [gguf.GGMLQuantizationType(t).name for name, dims, t, _ in infos if len(dims) == 1]
    assert set(norms) == {"F32"}  # norms are never quantized


@pytest.mark.parametrize("scheme", QUANT_TYPES)
def test_loads_and_generates(scheme: str, quantized: dict[str, Path], source: Path) -> None:
    """Each file runs, and its logits follow the f32 model's: mean per-position correlation
    above 0.25 (measured 0.33 for q2_K, 0.63-0.98 for 3- to 6-bit types on this deliberately
    chaotic tiny model; 0 for noise), above 0.99 for the 8- and 16-bit types."""
    with openllm_hub.load(quantized[scheme], device="cpu", threads=1, kv_cache_type="f32") as m, \
            openllm_hub.load(source, device="cpu", threads=1, kv_cache_type="f32") as ref:
        assert m.info.quantization == scheme
        out = m.generate(VERIFY_PROMPT, max_new_tokens=4, temperature=0.0)
        assert len(out.token_ids) == 4 or out.finish_reason == "stop"
        ids = ref.tokenize(VERIFY_PROMPT)
        a, b = m.logits(ids), ref.logits(ids)
        corr = float(np.mean([np.corrcoef(a[i], b[i])[0, 1] for i in range(len(ids))]))
        assert corr > (0.99 if scheme in ("q8_0", "f16", "bf16") else 0.25), corr


def test_requantizing_is_refused(quantized: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(InvalidParameterError, match="already quantized"):
        openllm_hub.quantize(quantized["q4_0"], tmp_path / "again.gguf", "q2_K")
    assert not (tmp_path / "again.gguf").exists()
