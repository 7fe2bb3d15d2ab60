"""LoRA on llama.cpp: the merged model converts to GGUF and runs, and PEFT adapters converted
to GGUF LoRA files and applied at load time (not merged) match the merged GGUF.

Bounds, as fractions of the reference's logit range (max - min, ~40 here):

* merged GGUF (f32, llama.cpp) vs the merged HF folder on transformers (float32): 1e-4.
  Two engines with different kernels and summation orders on the same f32 weights; observed
  ~2e-6 of the range. The LLaMA converter's own ``--verify`` bound for f32 is 2e-2.
* runtime LoRA (f32 base + f32 adapters) vs merged GGUF (f32), both on llama.cpp: 1e-4.
  ``W x + s B (A x)`` against ``(W + s B A) x`` in float32, observed ~1e-6 of the range; a
  q/k rotary permutation left out of B, a wrong alpha (rsLoRA) or a swapped embedding pair
  shifts logits by whole units, and the base alone differs from the merge by more than half
  the range (asserted as a control).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from llama_lora_tiny import CJK_PIECES, make_peft_adapter
from openllm_hub_llama.lora_gguf import convert_adapter_to_gguf

import openllm_hub
from openllm_hub.cli import main as cli_main
from openllm_hub.core.detect import read_gguf_metadata
from openllm_hub.errors import ConversionError

BOUND = 1e-4
IDS = [1, 306, 4700, 29871, 31999, 500, 12, 9000, 7, 8, 2, 17]
ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens", "lm_head")


@pytest.fixture(scope="module")
def setup(tiny_hf_factory: Callable[..., Path], tiny_gguf_factory: Callable[..., Path],
          tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Base (GQA: 4 heads, 2 kv heads) as HF and f32 GGUF; adapter ``a`` (rsLoRA on every linear
    layer, the embedding and the head) and ``b`` (q/k only, plain LoRA); their merge as HF and
    f32 GGUF; both adapters as GGUF LoRA files (``a`` converted against the GGUF base, ``b``
    against the HF folder)."""
    root = tmp_path_factory.mktemp("lora-gguf")
    base = tiny_hf_factory(num_kv_heads=2)
    base_gguf = tiny_gguf_factory("f32", num_kv_heads=2)
    a = make_peft_adapter(base, root / "a", r=4, alpha=6, use_rslora=True, targets=ALL, seed=11)
    b = make_peft_adapter(base, root / "b", r=8, alpha=16, targets=("q_proj", "k_proj"), seed=12)
    merged = openllm_hub.merge_lora(base, [a, b], root / "merged")
    merged_gguf = openllm_hub.convert(merged, root / "merged.gguf", to="gguf", outtype="f32").path
    return {"base": base, "base_gguf": base_gguf, "a": a, "b": b, "merged": merged, "merged_gguf": merged_gguf,
            "a_gguf": convert_adapter_to_gguf(a, base_gguf, root / "a.gguf"),
            "b_gguf": convert_adapter_to_gguf(b, base, root / "b.gguf"), "root": root}


def _relative(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(a - ref).max()) / float(ref.max() - ref.min())


def test_merged_model_converts_to_gguf_and_runs(setup: dict[str, Path]) -> None:
    with openllm_hub.load(setup["merged"], device="cpu") as hf, \
            openllm_hub.load(setup["merged_gguf"], device="cpu", kv_cache_type="f32") as gg:
        assert _relative(gg.logits(IDS), hf.logits(IDS)) <= BOUND
        text = gg.generate("Once upon a time", max_new_tokens=8, temperature=0).text
        assert text == hf.generate("Once upon a time", max_new_tokens=8, temperature=0).text


def test_runtime_lora_matches_merged_gguf(setup: dict[str, Path]) -> None:
    meta = read_gguf_metadata(setup["a_gguf"])
    assert meta["general.type"] == "adapter" and meta["adapter.type"] == "lora"
    assert meta["adapter.lora.alpha"] == pytest.approx(6 * 2.0)  # rsLoRA: alpha * sqrt(r), r = 4
    loras = [(str(setup["a_gguf"]), 1.0), (str(setup["b_gguf"]), 1.0)]
    with openllm_hub.load(setup["merged_gguf"], device="cpu", kv_cache_type="f32") as merged, \
            openllm_hub.load(setup["base_gguf"], device="cpu", kv_cache_type="f32", lora=loras) as runtime, \
            openllm_hub.load(setup["base_gguf"], device="cpu", kv_cache_type="f32") as plain:
        assert runtime.info.extra["loras_attached"] == 2
        ref = merged.logits(IDS)
        assert _relative(runtime.logits(IDS), ref) <= BOUND
        assert _relative(plain.logits(IDS), ref) > 0.5  # control: the adapters matter


def test_lora_scale_is_applied(setup: dict[str, Path], tmp_path: Path) -> None:
    """Scale 0.5 at load time equals merging an adapter whose B is halved (alpha halved)."""
    half = tmp_path / "b-half"
    import shutil

    shutil.copytree(setup["b"], half)
    cfg = json.loads((half / "adapter_config.json").read_text())
    cfg["lora_alpha"] = cfg["lora_alpha"] / 2
    (half / "adapter_config.json").write_text(json.dumps(cfg))
    merged = openllm_hub.merge_lora(setup["base"], [half], tmp_path / "m")
    merged_gguf = openllm_hub.convert(merged, tmp_path / "m.gguf", to="gguf", outtype="f32").path
    with openllm_hub.load(merged_gguf, device="cpu", kv_cache_type="f32") as m, \
            openllm_hub.load(setup["base_gguf"], device="cpu", kv_cache_type="f32",
                             lora=[(str(setup["b_gguf"]), 0.5)]) as r:
        assert _relative(r.logits(IDS), m.logits(IDS)) <= BOUND


def test_cli_lora_gguf_f16(setup: dict[str, Path], tmp_path: Path) -> None:
    """``openllm-hub lora gguf`` writes an f16 adapter. New error: A and B rounded to f16 (2^-11
    relative), and ggml rounds the activations entering an f16 matmul to f16 too; observed
    ~1.2e-3 of the range (these tiny random models amplify), bound 5e-3, still 100x below the
    difference the adapters make (control in the test above)."""
    out = tmp_path / "b16.gguf"
    assert cli_main(["lora", "gguf", str(setup["b"]), "--base", str(setup["base_gguf"]), "-o", str(out),
                     "--outtype", "f16"]) == 0
    with openllm_hub.load(setup["merged_gguf"], device="cpu", kv_cache_type="f32") as merged, \
            openllm_hub.load(setup["base_gguf"], device="cpu", kv_cache_type="f32",
                             lora=[(str(setup["a_gguf"]), 1.0), (str(out), 1.0)]) as runtime:
        assert _relative(runtime.logits(IDS), merged.logits(IDS)) <= 5e-3
    assert cli_main(["lora", "gguf", str(setup["b"]), "--base", str(setup["base_gguf"]), "-o", str(out)]) == 1


def test_full_weight_adapter_is_refused_with_a_pointer_to_merge(setup: dict[str, Path], tmp_path: Path) -> None:
    ext = make_peft_adapter(setup["base"], tmp_path / "ext", targets=("q_proj",), seed=13,
                            modules_to_save=("embed_tokens", "lm_head"), extra_pieces=CJK_PIECES[:4])
    with pytest.raises(ConversionError) as info:
        convert_adapter_to_gguf(ext, setup["base_gguf"], tmp_path / "ext.gguf")
    assert "extended vocabulary" in info.value.what and "merge-lora" in (info.value.fix or "")
    assert not (tmp_path / "ext.gguf").exists()


def test_adapter_for_another_base_is_refused(setup: dict[str, Path], tiny_hf_factory: Callable[..., Path],
                                             tmp_path: Path) -> None:
    other = tiny_hf_factory(hidden_size=32, intermediate_size=88, num_kv_heads=2)
    with pytest.raises(ConversionError, match="does not fit the base"):
        convert_adapter_to_gguf(setup["a"], other, tmp_path / "x.gguf")
    assert list(tmp_path.iterdir()) == []
