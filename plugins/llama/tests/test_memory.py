"""The llama family's memory description: published sizes, tiny HF / Meta / GGUF checkpoints
planned from config alone (nothing written, nothing converted), and the early refusal."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from openllm_hub_llama.memory import PUBLISHED, from_hf_config, read

from openllm_hub.cli import main
from openllm_hub.core.plan import MEMORY_ENV, parse_gpus, plan
from openllm_hub.errors import IncompatibleDeviceError


def _header_params(folder: Path) -> int:
    from openllm_hub.plugin import read_safetensors_header

    n = 0
    for f in folder.glob("*.safetensors"):
        for name, entry in read_safetensors_header(f).items():
            if name != "__metadata__":
                size = 1
                for d in entry["shape"]:
                    size *= d
                n += size
    return n


def test_published_sizes() -> None:
    assert plan(PUBLISHED["llama-65b"], parse_gpus("8x24G")).fits  # 130 GB fp16 over 8 GPUs
    assert not plan(PUBLISHED["llama-65b"], parse_gpus("1x80G")).fits
    assert plan(PUBLISHED["llama-7b"], parse_gpus("1x24G")).fits
    assert not plan(PUBLISHED["llama-13b"], parse_gpus("1x24G")).fits  # 26 GB of fp16 weights
    for name, spec in PUBLISHED.items():
        nominal = float(name.split("-")[-1].rstrip("b"))
        assert 0.9 < spec.n_params / 1e9 / nominal < 1.15
    hf = {"model_type": "llama", "num_hidden_layers": 32, "hidden_size": 4096, "num_attention_heads": 32,
          "vocab_size": 32000, "intermediate_size": 11008}
    assert from_hf_config(hf, "x", Path("config.json")).n_params == PUBLISHED["llama-7b"].n_params


def test_tiny_hf_and_gqa(tiny_hf_factory: Callable[..., Path]) -> None:
    mha, gqa = tiny_hf_factory(), tiny_hf_factory(num_kv_heads=2)
    for folder in (mha, gqa):
        spec = read(folder, "hf")
        assert (spec.num_layers, spec.hidden_size, spec.vocab_size) == (2, 64, 32000)
        assert abs(spec.n_params - _header_params(folder)) <= 2 * spec.hidden_size  # the final norm
    assert read(mha, "hf").kv_per_token_layer == 2 * 64
    assert read(gqa, "hf").kv_per_token_layer == 2 * 2 * 16  # K and V of 2 heads of 16


def test_tiny_meta_and_gguf(tiny_meta_factory: Callable[..., tuple[Path, Path]],
                            tiny_gguf_factory: Callable[..., Path], tiny_hf: Path) -> None:
    meta, twin = tiny_meta_factory()
    assert read(meta, "meta").n_params == read(twin, "hf").n_params  # Meta's FFN rule gives the same width
    f32, q8 = read(tiny_gguf_factory("f32"), "gguf"), read(tiny_gguf_factory("q8_0"), "gguf")
    assert f32.n_params == q8.n_params == read(tiny_hf, "hf").n_params  # the GGUF header's dimensions
    assert (f32.stored_bits, f32.dtype_bytes) == (None, 4)
    assert q8.stored_bits is not None and 8 <= q8.stored_bits <= 12  # 8.5 bits per weight plus the vocabulary


def _snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            out[dirpath] = (os.stat(dirpath).st_mtime_ns, 0)
            for name in dirnames + filenames:
                st = os.stat(os.path.join(dirpath, name))
                out[os.path.join(dirpath, name)] = (st.st_mtime_ns, st.st_size)
    return out


def test_plan_command_reads_config_alone_and_writes_nothing(
        tiny_hf: Path, tiny_meta_factory: Callable[..., tuple[Path, Path]], tiny_gguf_factory: Callable[..., Path],
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    meta, _ = tiny_meta_factory()
    gguf = tiny_gguf_factory("q8_0")
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("OPENLLM_HUB_CACHE_DIR", str(cache))
    roots = (tiny_hf, meta, gguf.parent, cache)
    before = _snapshot(*roots)
    for model in (tiny_hf, meta, gguf):  # a Meta checkpoint is planned, not converted into the cache
        assert main(["plan", str(model), "--gpus", "1x2G", "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["family"] == "llama" and out["fits"] is True and out["tp"] == 1
    assert _snapshot(*roots) == before
    assert main(["plan", "llama-13b", "--gpus", "2x24G"]) == 0
    assert "llama-13b (llama): 13.0B parameters on 2x24G (TP=2, fp16" in capsys.readouterr().out


def test_load_refuses_a_huge_config_before_any_weight(tmp_path: Path, tiny_hf: Path) -> None:
    from openllm_hub import load

    huge = tmp_path / "huge"
    huge.mkdir()
    (huge / "config.json").write_text(json.dumps({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "num_hidden_layers": 400,
        "hidden_size": 32768, "num_attention_heads": 256, "vocab_size": 32000, "intermediate_size": 131072}))
    with pytest.raises(IncompatibleDeviceError) as info:  # no weights exist: the refusal comes first
        load(huge, device="cpu")
    text = info.value.render()
    assert "this llama model (" in text and "B parameters) needs at least" in text and "GiB" in text
    assert "of memory available" in text and "openllm-hub plan" in text


def test_tiny_models_are_not_refused(tiny_hf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from openllm_hub import load

    monkeypatch.setenv(MEMORY_ENV, "64M")  # a small device, still far above the tiny model's needs
    with load(tiny_hf, device="cpu") as model:
        assert model.info.family == "llama"
