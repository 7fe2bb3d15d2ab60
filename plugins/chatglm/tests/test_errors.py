"""Bad input gives clear errors: missing tokenizer, shards that disagree with their index,
unknown ChatGLM variants, code-carrying pickles; and detection through the core API."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import openllm_hub
from openllm_hub.errors import (
    CorruptFileError,
    InvalidParameterError,
    NotFoundError,
    OpenLLMHubError,
    UnknownFormatError,
    UnsafeCheckpointError,
)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_config(folder: Path, **changes: object) -> None:
    path = folder / "config.json"
    cfg = json.loads(path.read_text(encoding="utf-8"))
    for key, value in changes.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    path.write_text(json.dumps(cfg), encoding="utf-8")


def test_detection(v1_dir: Path, v2_dir: Path, v3_dir: Path) -> None:
    for folder in (v1_dir, v2_dir, v3_dir):
        family, det = openllm_hub.detect(folder)
        assert family.name == "chatglm" and det.format == "hf"
    with openllm_hub.load(v3_dir, device="cpu") as m:
        assert m.info.family == "chatglm" and m.info.extra["variant"] == "chatglm3"
        assert m.info.parameters is not None and m.info.context_length == 512


def test_missing_tokenizer(v2_dir: Path, tmp_path: Path) -> None:
    folder = _copy(v2_dir, tmp_path / "m")
    (folder / "tokenizer.model").unlink()
    with pytest.raises(NotFoundError, match="tokenizer") as err:
        openllm_hub.load(folder, device="cpu")
    assert err.value.fix


def test_safetensors_shards_disagree_with_index(v2_dir: Path, tmp_path: Path) -> None:
    folder = _copy(v2_dir, tmp_path / "m")
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text(encoding="utf-8"))
    name = next(iter(index["weight_map"]))
    shards = sorted(set(index["weight_map"].values()))
    other = next(s for s in shards if s != index["weight_map"][name])
    index["weight_map"][name] = other  # the index now places a tensor in the wrong shard
    index_path.write_text(json.dumps(index), encoding="utf-8")
    with pytest.raises(CorruptFileError, match=r"disagrees with model\.safetensors\.index\.json"):
        openllm_hub.load(folder, device="cpu")
    index["weight_map"][name] = "model-00009-of-00009.safetensors"  # a shard that does not exist
    index_path.write_text(json.dumps(index), encoding="utf-8")
    with pytest.raises(NotFoundError, match="missing"):
        openllm_hub.load(folder, device="cpu")


def test_bin_shards_disagree_with_index(v1_dir: Path, tmp_path: Path) -> None:
    folder = _copy(v1_dir, tmp_path / "m")
    index_path = folder / "pytorch_model.bin.index.json"
    index = json.loads(index_path.read_text(encoding="utf-8"))
    index["weight_map"]["transformer.layers.7.attention.dense.weight"] = "pytorch_model-00001-of-00002.bin"
    index_path.write_text(json.dumps(index), encoding="utf-8")
    with pytest.raises(CorruptFileError, match="lacks 1 tensor"):
        openllm_hub.load(folder, device="cpu")


def test_missing_and_misshapen_tensors(make_ckpt: Callable[..., Path], tmp_path: Path) -> None:
    src = make_ckpt("chatglm2", seed=11)  # one model.safetensors, no index
    folder = _copy(src, tmp_path / "m")
    _edit_config(folder, num_layers=3)  # config claims a layer the weights do not have
    with pytest.raises(CorruptFileError, match="lacks"):
        openllm_hub.load(folder, device="cpu")
    _edit_config(folder, num_layers=2, ffn_hidden_size=64)  # shapes no longer match
    with pytest.raises(CorruptFileError, match="shape"):
        openllm_hub.load(folder, device="cpu")
    (folder / "model.safetensors").unlink()
    with pytest.raises(NotFoundError, match="no weights"):
        openllm_hub.load(folder, device="cpu")


def test_unknown_variants(v2_dir: Path, v1_dir: Path, tmp_path: Path) -> None:
    folder = _copy(v2_dir, tmp_path / "m")
    # ChatGLM2 and ChatGLM3 share config and weights; with no name to go by, say so
    _edit_config(folder, _name_or_path="my-finetune")
    tok_cfg = folder / "tokenizer_config.json"
    tok_cfg.write_text(json.dumps({"tokenizer_class": "ChatGLMTokenizer"}), encoding="utf-8")
    with pytest.raises(UnknownFormatError, match="cannot tell ChatGLM2 from ChatGLM3") as err:
        openllm_hub.load(folder, device="cpu")
    assert "variant=" in (err.value.fix or "")
    with openllm_hub.load(folder, device="cpu", variant="chatglm3") as m:
        assert m.info.extra["variant"] == "chatglm3" and m.default_chat_template == "chatglm3"
    with pytest.raises(InvalidParameterError, match="does not fit"):
        openllm_hub.load(folder, device="cpu", variant="chatglm")
    with pytest.raises(InvalidParameterError, match="variant"):
        openllm_hub.load(folder, device="cpu", variant="chatglm4")
    # layouts this engine does not implement
    for change, match in (({"rmsnorm": False}, "rmsnorm"), ({"pre_seq_len": 8}, "P-tuning"),
                          ({"_name_or_path": "THUDM/glm-4-9b-chat"}, "GLM-4"),
                          ({"quantization_bit": 3}, "quantization_bit")):
        bad = _copy(v2_dir, tmp_path / f"bad{len(list(tmp_path.iterdir()))}")
        _edit_config(bad, **change)
        with pytest.raises(UnknownFormatError, match=match):
            openllm_hub.load(bad, device="cpu")
    odd = _copy(v1_dir, tmp_path / "odd")
    _edit_config(odd, position_encoding_2d=None, inner_hidden_size=None, max_sequence_length=None)
    with pytest.raises(UnknownFormatError, match="unknown ChatGLM variant"):
        openllm_hub.load(odd, device="cpu", family="chatglm")


class _Exploit:
    """A pickle payload that would run a shell command when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, ...]:
        return (os.system, (f"touch {self.marker}",))


def test_code_carrying_bin_is_refused_without_running(v1_dir: Path, tmp_path: Path) -> None:
    folder = _copy(v1_dir, tmp_path / "m")
    marker = tmp_path / "PWNED"
    shard = folder / "pytorch_model-00001-of-00002.bin"
    state = torch.load(shard, weights_only=True)
    state["transformer.word_embeddings.weight"] = _Exploit(marker)  # type: ignore[assignment]
    torch.save(state, shard)
    with pytest.raises(UnsafeCheckpointError):
        openllm_hub.load(folder, device="cpu")
    assert not marker.exists()


def test_context_and_ids_bounds(v2_dir: Path) -> None:
    with openllm_hub.load(v2_dir, device="cpu", context_length=32) as m:
        assert m.info.context_length == 32
        with pytest.raises(InvalidParameterError):
            m.generate("word " * 40)
        with pytest.raises(InvalidParameterError, match="outside the vocabulary"):
            m.logits([10**6])
        out = m.generate("hi", max_new_tokens=100, temperature=0.0)  # stops at the context end
        assert out.usage.total_tokens <= 32
    with pytest.raises(OpenLLMHubError, match="quantize"):
        openllm_hub.load(v2_dir, device="cpu", quantize="int3")
