"""Bad inputs to the converters: each a specific OpenLLMHubError, and nothing at the destination."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import openllm_hub
from openllm_hub.core.io import TMP_MARK
from openllm_hub.errors import ConversionError, CorruptFileError, NotFoundError, OpenLLMHubError


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "src"
    shutil.copytree(src, dst)
    return dst


def _convert_fails(src: Path, tmp_path: Path, error: type[OpenLLMHubError], match: str, to: str = "gguf") -> None:
    out = tmp_path / ("out.gguf" if to == "gguf" else "out")
    with pytest.raises(error, match=match) as info:
        openllm_hub.convert(src, out, to=to, outtype="f32" if to == "gguf" else None, verify=False)
    assert info.value.where  # says where
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TMP_MARK)]


@pytest.fixture
def sharded(tiny_hf_factory: Callable[..., Path], tmp_path: Path) -> Path:
    return _copy(tiny_hf_factory(shards=3), tmp_path)


# ---- HuggingFace sources -------------------------------------------------------------------------
def test_missing_tokenizer(tiny_hf: Path, tmp_path: Path) -> None:
    src = _copy(tiny_hf, tmp_path)
    (src / "tokenizer.model").unlink()
    _convert_fails(src, tmp_path, NotFoundError, "tokenizer.model is missing")


def test_tokenizer_disagrees_with_embedding(tiny_hf_factory: Callable[..., Path], tmp_path: Path) -> None:
    src = _copy(tiny_hf_factory(vocab_size=32005), tmp_path)  # 5 rows no tokenizer entry accounts for
    _convert_fails(src, tmp_path, CorruptFileError, "tokenizer has 32000 tokens.*32005 rows")


def test_config_vocab_disagrees_with_embedding(tiny_hf: Path, tmp_path: Path) -> None:
    src = _copy(tiny_hf, tmp_path)
    cfg = json.loads((src / "config.json").read_text())
    cfg["vocab_size"] = 32016
    (src / "config.json").write_text(json.dumps(cfg))
    _convert_fails(src, tmp_path, CorruptFileError, "vocab_size 32016 but the embedding has 32000 rows")


def test_truncated_safetensors_shard(sharded: Path, tmp_path: Path) -> None:
    shard = sharded / "model-00002-of-00003.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    _convert_fails(sharded, tmp_path, CorruptFileError, "past the end of the file")


def test_garbage_safetensors_header(sharded: Path, tmp_path: Path) -> None:
    shard = sharded / "model-00001-of-00003.safetensors"
    data = bytearray(shard.read_bytes())
    data[8:40] = b"\xff" * 32
    shard.write_bytes(bytes(data))
    _convert_fails(sharded, tmp_path, CorruptFileError, "safetensors header")


def test_missing_shard(sharded: Path, tmp_path: Path) -> None:
    (sharded / "model-00003-of-00003.safetensors").unlink()
    _convert_fails(sharded, tmp_path, NotFoundError, "listed in the index is missing")


def test_index_disagrees_with_shards(sharded: Path, tmp_path: Path) -> None:
    index_file = sharded / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    index["weight_map"]["model.norm.weight"] = "model-00001-of-00003.safetensors"  # it lives in shard 3
    index_file.write_text(json.dumps(index))
    _convert_fails(sharded, tmp_path, CorruptFileError, "shard disagrees with the index")


def test_truncated_bin_shard(tiny_hf_factory: Callable[..., Path], tmp_path: Path) -> None:
    src = _copy(tiny_hf_factory(shards=2, fmt="bin"), tmp_path)
    shard = src / "pytorch_model-00001-of-00002.bin"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 4096])
    _convert_fails(src, tmp_path, CorruptFileError, "cannot read PyTorch checkpoint")


def test_unsupported_dtype(tiny_hf: Path, tmp_path: Path) -> None:
    src = _copy(tiny_hf, tmp_path)
    state = load_file(src / "model.safetensors")
    state["model.layers.0.mlp.up_proj.weight"] = state["model.layers.0.mlp.up_proj.weight"].to(torch.float64)
    save_file(state, src / "model.safetensors")
    _convert_fails(src, tmp_path, ConversionError, "dtype F64")


def test_missing_tensor(tiny_hf: Path, tmp_path: Path) -> None:
    src = _copy(tiny_hf, tmp_path)
    state = load_file(src / "model.safetensors")
    del state["model.layers.1.self_attn.v_proj.weight"]
    save_file(state, src / "model.safetensors")
    _convert_fails(src, tmp_path, CorruptFileError, "v_proj.weight' is missing")


# ---- Meta sources ------------------------------------------------------------------------------------
@pytest.fixture
def meta3(tiny_meta_factory: Callable[..., tuple[Path, Path]], tmp_path: Path) -> Path:
    return _copy(tiny_meta_factory(n_shards=3)[0], tmp_path)


def test_meta_missing_tokenizer(meta3: Path, tmp_path: Path) -> None:
    (meta3 / "tokenizer.model").unlink()
    _convert_fails(meta3, tmp_path, NotFoundError, "tokenizer.model is missing", to="hf")


def test_meta_missing_middle_shard(meta3: Path, tmp_path: Path) -> None:
    (meta3 / "consolidated.01.pth").unlink()
    _convert_fails(meta3, tmp_path, NotFoundError, r"consolidated\.01\.pth", to="hf")


def test_meta_missing_last_shard(meta3: Path, tmp_path: Path) -> None:
    (meta3 / "consolidated.02.pth").unlink()
    _convert_fails(meta3, tmp_path, CorruptFileError, "merges to shape", to="hf")


def test_meta_truncated_shard(meta3: Path, tmp_path: Path) -> None:
    shard = meta3 / "consolidated.00.pth"
    shard.write_bytes(shard.read_bytes()[:100_000])
    _convert_fails(meta3, tmp_path, CorruptFileError, "cannot read PyTorch checkpoint", to="gguf")


def test_meta_params_vocab_disagrees(meta3: Path, tmp_path: Path) -> None:
    params = json.loads((meta3 / "params.json").read_text())
    params["vocab_size"] = 32001
    (meta3 / "params.json").write_text(json.dumps(params))
    _convert_fails(meta3, tmp_path, CorruptFileError, "vocab_size 32001 disagrees", to="hf")


def test_meta_tokenizer_disagrees(tiny_meta_factory: Callable[..., tuple[Path, Path]], tmp_path: Path) -> None:
    src = _copy(tiny_meta_factory(n_shards=2, vocab_size=32003)[0], tmp_path)
    _convert_fails(src, tmp_path, CorruptFileError, "tokenizer has 32000 tokens", to="hf")


def test_hf_to_meta_rejects_impossible_split(tiny_hf: Path, tmp_path: Path) -> None:
    from openllm_hub.errors import InvalidParameterError

    out = tmp_path / "meta"
    with pytest.raises(InvalidParameterError, match="shards"):
        openllm_hub.convert(tiny_hf, out, to="meta", options={"shards": 0})
    assert not out.exists()
