"""Bad input to the llama engines and the quantizer: each case is a clear OpenLLMHubError
(what, where, fix) through the API, never a crash or a half-written output."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import openllm_hub
from openllm_hub.errors import (
    CorruptFileError,
    DestinationExistsError,
    InvalidParameterError,
    NotFoundError,
    OpenLLMHubError,
    UnknownFormatError,
)


@pytest.fixture(scope="module")
def good(tiny_gguf_factory: Callable[..., Path]) -> Path:
    return tiny_gguf_factory("f32")


def _variant(good: Path, tmp_path: Path, data: bytes, name: str = "bad.gguf") -> Path:
    out = tmp_path / name
    out.write_bytes(data)
    return out


def test_truncated_header(good: Path, tmp_path: Path) -> None:
    bad = _variant(good, tmp_path, good.read_bytes()[:1000])  # inside the vocabulary arrays
    with pytest.raises(CorruptFileError, match="truncated") as e:
        openllm_hub.load(bad, device="cpu")
    assert e.value.where == str(bad)


def test_tensor_data_runs_past_the_end(good: Path, tmp_path: Path) -> None:
    """The header is whole but the file ends 64 bytes early: the last tensor's data would run
    past the end of the file."""
    bad = _variant(good, tmp_path, good.read_bytes()[:-64])
    with pytest.raises(CorruptFileError, match="runs past the end of the file") as e:
        openllm_hub.load(bad, device="cpu", threads=1)
    assert e.value.fix and "not within the file bounds" in e.value.fix


def test_tensor_offset_out_of_place(good: Path, tmp_path: Path, gguf_tensor_infos: Callable[[Path], Any]) -> None:
    """A tensor whose offset points 10 MB further than the layout allows."""
    data = bytearray(good.read_bytes())
    infos, _start, _align = gguf_tensor_infos(good)
    name, dims, _ttype, offset = max(infos, key=lambda t: t[3])
    enc = name.encode()
    pos = bytes(data).index(struct.pack("<Q", len(enc)) + enc) + 8 + len(enc) + 4 + 8 * len(dims) + 4
    assert struct.unpack_from("<Q", data, pos)[0] == offset
    struct.pack_into("<Q", data, pos, offset + 10_000_000)
    bad = _variant(good, tmp_path, bytes(data))
    with pytest.raises(CorruptFileError, match=f"tensor '{name}' has offset"):
        openllm_hub.load(bad, device="cpu", threads=1)


def test_wrong_magic(good: Path, tmp_path: Path) -> None:
    bad = _variant(good, tmp_path, b"GGUG" + good.read_bytes()[4:])
    with pytest.raises(UnknownFormatError, match="no installed family recognises"):
        openllm_hub.load(bad, device="cpu")


def test_engine_option_mismatch(good: Path) -> None:
    with pytest.raises(InvalidParameterError, match=r"GGUF files run on llama\.cpp only"):
        openllm_hub.load(good, device="cpu", engine="transformers")
    with pytest.raises(InvalidParameterError, match="kv_cache_type"):
        openllm_hub.load(good, device="cpu", kv_cache_type="q4")


def test_lora_problems(good: Path, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="LoRA adapter not found"):
        openllm_hub.load(good, device="cpu", lora=[(str(tmp_path / "missing.gguf"), 1.0)])
    with pytest.raises(CorruptFileError, match="LoRA adapter"):  # a base model is not an adapter
        openllm_hub.load(good, device="cpu", threads=1, lora=[(str(good), 1.0)])


def test_token_ids_outside_the_vocabulary(good: Path, tiny_hf_factory: Callable[..., Path]) -> None:
    for path in (good, tiny_hf_factory()):
        with openllm_hub.load(path, device="cpu", threads=1) as m:
            with pytest.raises(InvalidParameterError, match="outside the vocabulary"):
                m.logits([1, 32000])
            with pytest.raises(InvalidParameterError, match="outside the vocabulary"):
                m.detokenize([-1]) if m.info.engine == "llama.cpp" else m.logits([-5])


def test_unknown_quantization_type(good: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidParameterError, match="unknown quantization type 'q4_k_x'") as e:
        openllm_hub.quantize(good, tmp_path / "out.gguf", "q4_k_x")
    assert e.value.fix and "q4_K_M" in e.value.fix and "q8_0" in e.value.fix
    assert not (tmp_path / "out.gguf").exists()


def test_quantize_destination_rules(good: Path, tmp_path: Path) -> None:
    with pytest.raises(DestinationExistsError, match="overwrite an input"):
        openllm_hub.quantize(good, good, "q8_0")
    present = tmp_path / "present.gguf"
    present.write_bytes(b"keep me")
    with pytest.raises(DestinationExistsError, match="already exists"):
        openllm_hub.quantize(good, present, "q8_0")
    assert present.read_bytes() == b"keep me"
    out = openllm_hub.quantize(good, present, "q8_0", force=True, threads=1)
    assert out == present and present.read_bytes()[:4] == b"GGUF"
    assert [p.name for p in tmp_path.iterdir()] == ["present.gguf"]  # no temporary left behind


def test_quantize_an_hf_folder(tiny_hf_factory: Callable[..., Path], tmp_path: Path) -> None:
    with pytest.raises(InvalidParameterError, match="cannot quantize hf files"):
        openllm_hub.quantize(tiny_hf_factory(), tmp_path / "x.gguf", "q4_0")


def test_every_error_has_what_and_where(good: Path, tmp_path: Path) -> None:
    cases = [
        lambda: openllm_hub.load(_variant(good, tmp_path, good.read_bytes()[:-64], "t.gguf"), device="cpu"),
        lambda: openllm_hub.quantize(good, tmp_path / "o.gguf", "nope"),
        lambda: openllm_hub.load(tmp_path / "nothing-here.gguf", device="cpu"),
    ]
    for case in cases:
        with pytest.raises(OpenLLMHubError) as e:
            case()
        assert e.value.what and e.value.where and "\n" not in e.value.render()
