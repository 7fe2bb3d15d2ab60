"""The shared HF folder reader/writer: round trips, and each index/shard check's error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from openllm_hub.engines.hf_folder import (
    BIN_INDEX,
    SAFE_INDEX,
    HFFolder,
    SafetensorsWriter,
    find_weights,
    shard_file_name,
    write_hf_weights,
)
from openllm_hub.errors import ConversionError, CorruptFileError, NotFoundError


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {f"layer.{i}.weight": torch.randn(3, 4, generator=g) for i in range(4)} | {
        "norm.weight": torch.ones(4, dtype=torch.float16)}


def _write(folder: Path, kind: str = "safetensors", shards: int = 2) -> dict[str, torch.Tensor]:
    folder.mkdir(parents=True, exist_ok=True)
    state = _state()
    names = list(state)
    per = -(-len(names) // shards)
    groups = [{n: state[n] for n in names[i:i + per]} for i in range(0, len(names), per)]
    write_hf_weights(folder, groups, kind=kind)  # type: ignore[arg-type]
    return state


def _edit_index(folder: Path, index_name: str, tensor: str, file: object) -> Path:
    index = folder / index_name
    data = json.loads(index.read_text())
    data["weight_map"][tensor] = file
    index.write_text(json.dumps(data))
    return index


@pytest.mark.parametrize("kind", ["safetensors", "bin"])
@pytest.mark.parametrize("shards", [1, 2])
def test_round_trip(tmp_path: Path, kind: str, shards: int) -> None:
    state = _write(tmp_path, kind, shards)
    files = sorted(p.name for p in tmp_path.iterdir())
    index = SAFE_INDEX if kind == "safetensors" else BIN_INDEX
    expected = [shard_file_name(kind, i, shards) for i in range(shards)]  # type: ignore[arg-type]
    assert files == sorted(expected + ([index] if shards > 1 else []))
    folder = HFFolder(tmp_path)
    assert folder.kind == kind
    got = dict(folder.iter_tensors())
    assert list(got) == list(state)
    for name, t in state.items():
        assert torch.equal(got[name], t) and got[name].dtype == t.dtype
        assert torch.equal(folder.tensor(name), t)
    assert folder.tensor_shapes() == [(n, tuple(t.shape)) for n, t in state.items()]
    assert set(folder.tensor_files()) == set(state)
    if shards > 1:
        total = json.loads((tmp_path / index).read_text())["metadata"]["total_size"]
        assert total == sum(t.numel() * t.element_size() for t in state.values())


def test_shard_names() -> None:
    assert shard_file_name("safetensors", 0, 1) == "model.safetensors"
    assert shard_file_name("safetensors", 1, 3) == "model-00002-of-00003.safetensors"
    assert shard_file_name("bin", 0, 2) == "pytorch_model-00001-of-00002.bin"


def test_safetensors_preferred(tmp_path: Path) -> None:
    _write(tmp_path, "bin", 1)
    _write(tmp_path, "safetensors", 1)
    assert find_weights(tmp_path).kind == "safetensors"


def test_no_weights(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="no weights") as info:
        find_weights(tmp_path)
    assert info.value.fix


@pytest.mark.parametrize("bad", ["../outside.safetensors", "/etc/passwd", "sub/model.safetensors",
                                 "sub\\model.safetensors", "..", ""])
def test_index_pointing_outside_the_folder(tmp_path: Path, bad: str) -> None:
    folder = tmp_path / "ckpt"
    _write(folder)
    (tmp_path / "outside.safetensors").write_bytes((folder / "model-00001-of-00002.safetensors").read_bytes())
    index = _edit_index(folder, SAFE_INDEX, "norm.weight", bad)
    with pytest.raises(CorruptFileError, match="inside the folder") as info:
        HFFolder(folder)
    assert repr(bad) in str(info.value) and "'norm.weight'" in str(info.value)
    assert Path(str(info.value.where)) == index
    assert info.value.fix


def test_index_naming_a_missing_shard(tmp_path: Path) -> None:
    _write(tmp_path)
    _edit_index(tmp_path, SAFE_INDEX, "norm.weight", "model-00009-of-00009.safetensors")
    with pytest.raises(NotFoundError, match=r"00009-of-00009\.safetensors listed in the index is missing") as info:
        HFFolder(tmp_path)
    assert Path(str(info.value.where)) == tmp_path / "model-00009-of-00009.safetensors"
    assert SAFE_INDEX in (info.value.fix or "")


def test_index_without_weight_map(tmp_path: Path) -> None:
    _write(tmp_path)
    (tmp_path / SAFE_INDEX).write_text(json.dumps({"metadata": {}}))
    with pytest.raises(CorruptFileError, match="no weight_map"):
        HFFolder(tmp_path)


def test_index_with_a_non_string_shard(tmp_path: Path) -> None:
    _write(tmp_path)
    _edit_index(tmp_path, SAFE_INDEX, "norm.weight", 3)
    with pytest.raises(CorruptFileError, match=r"invalid shard 3 for 'norm\.weight'"):
        HFFolder(tmp_path)


def test_safetensors_shard_disagrees_with_index(tmp_path: Path) -> None:
    _write(tmp_path)
    _edit_index(tmp_path, SAFE_INDEX, "norm.weight", "model-00001-of-00002.safetensors")
    with pytest.raises(CorruptFileError, match=r"lacks 1 tensor.*'norm.weight'") as info:
        HFFolder(tmp_path)  # checked when opened: the headers are read up front
    assert SAFE_INDEX in str(info.value)


def test_bin_shard_disagrees_with_index(tmp_path: Path) -> None:
    _write(tmp_path, "bin")
    _edit_index(tmp_path, BIN_INDEX, "norm.weight", "pytorch_model-00001-of-00002.bin")
    folder = HFFolder(tmp_path)  # .bin shards are checked when first opened
    with pytest.raises(CorruptFileError, match=r"disagrees with pytorch_model\.bin\.index\.json"):
        dict(folder.iter_tensors())


def test_truncated_safetensors_shard(tmp_path: Path) -> None:
    _write(tmp_path)
    shard = tmp_path / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-8])
    with pytest.raises(CorruptFileError, match="past the end"):
        HFFolder(tmp_path)


def test_unknown_tensor(tmp_path: Path) -> None:
    _write(tmp_path)
    with pytest.raises(NotFoundError, match="'nope' is not in the checkpoint"):
        HFFolder(tmp_path).tensor("nope")


def test_streaming_safetensors_writer(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    state = _state()
    path = tmp_path / "model.safetensors"
    entries = [(n, "F32" if t.dtype == torch.float32 else "F16", tuple(t.shape)) for n, t in state.items()]
    w = SafetensorsWriter(path, entries)
    for n, t in state.items():
        w.write(n, t)
    w.close()
    back = load_file(path)
    assert all(torch.equal(back[n], t) for n, t in state.items())

    w = SafetensorsWriter(tmp_path / "partial.safetensors", entries)
    with pytest.raises(ConversionError, match="expected"):
        w.write("norm.weight", state["norm.weight"])  # out of the announced order
    with pytest.raises(ConversionError, match="before every tensor"):
        w.close()
