"""RWKV-4 .pth <-> transformers RwkvForCausalLM: the same weights on both engines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import openllm_hub
from openllm_hub.errors import ConversionError, InvalidParameterError

#: transformers' RWKV-4 (per-token CPU loop, nn.Linear) and the rwkv package (TorchScript
#: sequence functions) do the same fp32 arithmetic; on these models the logits came out
#: identical (max |diff| 0). 1e-5 allows for other BLAS builds ordering sums differently.
HF_BOUND = 1e-5


@pytest.fixture(scope="module")
def hf_dir(ckpt: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hf") / "rwkv4-hf"
    result = openllm_hub.convert(ckpt["4"], out, to="hf", verify=True, progress=False)
    assert result.verify is not None and result.verify.passed and result.verify.greedy_equal
    assert result.verify.relative_diff <= 1e-4
    return out


def test_layout_of_the_folder(hf_dir: Path) -> None:
    import json

    from safetensors import safe_open

    cfg = json.loads((hf_dir / "config.json").read_text())
    assert cfg["model_type"] == "rwkv" and cfg["architectures"] == ["RwkvForCausalLM"]
    assert (cfg["vocab_size"], cfg["hidden_size"], cfg["num_hidden_layers"]) == (512, 64, 2)
    assert cfg["context_length"] == 1024  # from the file name's ctx1024
    with safe_open(str(hf_dir / "model.safetensors"), framework="pt") as fh:
        names = set(fh.keys())
    assert {"rwkv.embeddings.weight", "rwkv.blocks.0.pre_ln.weight", "rwkv.blocks.1.attention.time_mix_key",
            "rwkv.blocks.1.feed_forward.time_mix_receptance", "rwkv.ln_out.bias", "head.weight"} <= names
    assert (hf_dir / "tokenizer.json").is_file()  # the 20B-style tokenizer travels along


def test_transformers_equals_rwkv_package(hf_dir: Path, ckpt: dict[str, Path], pkg: Any) -> None:
    """transformers itself (not our engine) on the converted folder vs the package on the .pth."""
    from transformers import RwkvForCausalLM

    hf = RwkvForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32, local_files_only=True).eval()
    with openllm_hub.load(ckpt["4"], device="cpu") as m:
        ids = m.tokenize("Bob: What is the capital of France?\n\nAlice: The capital of France is Paris.")
    with torch.no_grad():
        theirs = hf(input_ids=torch.tensor([ids])).logits[0].float().numpy()
    ours = pkg.logits(pkg.model(ckpt["4"], "4"), ids)
    assert float(np.abs(theirs - ours).max()) <= HF_BOUND
    # and our transformers engine, on the folder and on the .pth renamed in memory
    with openllm_hub.load(hf_dir, device="cpu") as a, openllm_hub.load(ckpt["4"], device="cpu",
                                                                       engine="transformers") as b:
        assert a.info.engine == b.info.engine == "transformers"
        assert np.array_equal(a.logits(ids), theirs) and np.array_equal(b.logits(ids), theirs)
        assert a.generate("Bob: hi", max_new_tokens=8, temperature=0.0).token_ids == \
            b.generate("Bob: hi", max_new_tokens=8, temperature=0.0).token_ids


def test_round_trip_back_to_pth(hf_dir: Path, ckpt: dict[str, Path], tmp_path: Path) -> None:
    # a .pth cannot carry its tokenizer: like ChatRWKV, keep 20B_tokenizer.json beside it
    # (verification loads the output, and a 512-row vocabulary is not the World tokenizer's)
    (tmp_path / "20B_tokenizer.json").write_bytes((hf_dir / "tokenizer.json").read_bytes())
    back = tmp_path / "back.pth"
    result = openllm_hub.convert(hf_dir, back, to="rwkv-pth", verify=True, progress=False)
    assert result.verify is not None and result.verify.passed and result.verify.max_abs_diff <= HF_BOUND
    original = torch.load(ckpt["4"], weights_only=True)
    again = torch.load(back, weights_only=True)
    assert list(again) == list(original)  # the trainer's key order
    assert all(torch.equal(original[k], again[k]) for k in original)


def test_bf16_outtype(ckpt: dict[str, Path], tmp_path: Path) -> None:
    from safetensors import safe_open

    out = tmp_path / "bf16"
    result = openllm_hub.convert(ckpt["4"], out, to="hf", outtype="bf16", verify=True, progress=False)
    assert result.verify is not None and result.verify.passed
    with safe_open(str(out / "model.safetensors"), framework="pt") as fh:
        assert fh.get_tensor("head.weight").dtype == torch.bfloat16


def test_only_rwkv4_converts(ckpt: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="transformers has RWKV-4 only; this is RWKV-6"):
        openllm_hub.convert(ckpt["6"], tmp_path / "x", to="hf", progress=False)
    assert not (tmp_path / "x").exists()  # nothing half-written
    with pytest.raises(InvalidParameterError, match="no converter"):
        openllm_hub.convert(ckpt["6"], tmp_path / "y", to="gguf", progress=False)


def test_rwkv_engine_refuses_hf_folder(hf_dir: Path) -> None:
    with pytest.raises(InvalidParameterError, match="engine='transformers'"):
        openllm_hub.load(hf_dir, device="cpu", engine="rwkv")
