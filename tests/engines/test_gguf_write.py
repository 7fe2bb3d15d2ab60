"""The shared streaming GGUF writer: what it writes reads back, and a failure leaves nothing open or behind."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import gguf
import numpy as np
import pytest

from openllm_hub.core.io import TMP_MARK
from openllm_hub.engines.gguf_write import (
    GGUFTensor,
    bf16_bits_to_f32,
    check_outtype,
    encode,
    file_type,
    tensor_qtype,
    write_gguf_file,
)
from openllm_hub.errors import InvalidParameterError

T = gguf.GGMLQuantizationType


def _matrix(rows: int = 6, cols: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)


def _chunks(a: np.ndarray, step: int = 2) -> Iterator[np.ndarray]:
    for s in range(0, a.shape[0], step):
        yield a[s:s + step]


def _rows(a: np.ndarray) -> Callable[[], Iterator[np.ndarray]]:
    return lambda: _chunks(a)


def _tensors(outtype: str, data: dict[str, np.ndarray]) -> list[GGUFTensor]:
    return [GGUFTensor(name, a.shape, tensor_qtype(outtype, a.shape), _rows(a)) for name, a in data.items()]


def _metadata(writer: gguf.GGUFWriter) -> None:
    writer.add_name("tiny")
    writer.add_block_count(1)
    writer.add_file_type(file_type("q8_0"))


def _open_fds_under(folder: Path) -> list[str]:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(folder)):
            out.append(target)
    return out


def test_types_follow_llama_cpp() -> None:
    assert tensor_qtype("q8_0", (8,)) == T.F32  # 1-D tensors stay F32
    assert tensor_qtype("q8_0", (4, 64)) == T.Q8_0
    assert tensor_qtype("q8_0", (4, 48)) == T.F16  # rows not a multiple of 32: F16 fallback
    assert tensor_qtype("f16", (4, 48)) == T.F16
    assert tensor_qtype("bf16", (4, 48)) == T.BF16
    assert tensor_qtype("f32", (4, 64)) == T.F32
    with pytest.raises(InvalidParameterError, match="unknown GGUF outtype 'q4_0'") as info:
        check_outtype("q4_0", ("f32", "f16"))
    assert "f32, f16" in (info.value.fix or "")


def test_encode() -> None:
    a = _matrix()
    assert encode(a, T.F32).dtype == np.float32
    assert np.array_equal(encode(a, T.F16), a.astype(np.float16))
    half = a.astype(np.float16)
    assert encode(half, T.F16) is half  # already the target type: passes through
    bits = (a.view(np.uint32) >> 16).astype(np.uint16)  # bf16 by truncation
    assert encode(bits, T.BF16, bf16_bits=True) is bits
    assert np.array_equal(encode(bits, T.F32, bf16_bits=True), bf16_bits_to_f32(bits))
    assert encode(a, T.Q8_0).nbytes == a.shape[0] * (a.shape[1] // 32) * 34


@pytest.mark.parametrize("outtype", ["f32", "f16", "q8_0"])
def test_written_file_reads_back(tmp_path: Path, outtype: str) -> None:
    data = {"blk.0.attn_q.weight": _matrix(), "blk.0.ffn.weight": _matrix(4, 48, 1),
            "output_norm.weight": np.ones(64, dtype=np.float32)}
    dst = tmp_path / "out.gguf"
    write_gguf_file(dst, "llama", _metadata, _tensors(outtype, data))
    assert _open_fds_under(tmp_path) == []  # the writer closed its file
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TMP_MARK)]
    reader = gguf.GGUFReader(dst)
    assert reader.fields["general.name"].contents() == "tiny"
    got = {t.name: t for t in reader.tensors}
    assert list(got) == list(data)
    for name, a in data.items():
        t = got[name]
        assert t.tensor_type == tensor_qtype(outtype, a.shape)
        values = gguf.quants.dequantize(t.data, t.tensor_type).reshape(a.shape)
        tol = {"f32": 0.0, "f16": 1e-3, "q8_0": 2e-2}[outtype] * float(np.abs(a).max())
        assert np.abs(values - a).max() <= tol, name


def test_failure_mid_write_leaves_no_file_and_closes_the_writer(tmp_path: Path) -> None:
    def broken() -> Iterator[np.ndarray]:
        yield _matrix()[:2]
        raise OSError("disk went away")

    tensors = _tensors("f16", {"a.weight": _matrix()})
    tensors.append(GGUFTensor("b.weight", (6, 64), T.F16, broken))
    dst = tmp_path / "out.gguf"
    with pytest.raises(OSError, match="disk went away"):
        write_gguf_file(dst, "llama", _metadata, tensors)
    assert list(tmp_path.iterdir()) == []  # no output, no temporary
    assert _open_fds_under(tmp_path) == []  # the writer's file was closed


def test_failure_keeps_an_existing_file(tmp_path: Path) -> None:
    dst = tmp_path / "out.gguf"
    dst.write_bytes(b"previous")

    def metadata(writer: gguf.GGUFWriter) -> None:
        raise ValueError("bad metadata")

    with pytest.raises(ValueError, match="bad metadata"):
        write_gguf_file(dst, "llama", metadata, _tensors("f32", {"a.weight": _matrix()}))
    assert dst.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["out.gguf"]
    assert _open_fds_under(tmp_path) == []


def test_wrong_chunk_size_is_an_internal_error(tmp_path: Path) -> None:
    from openllm_hub.errors import ConversionError

    short = GGUFTensor("a.weight", (6, 64), T.F32, lambda: iter([_matrix()[:3]]))
    with pytest.raises(ConversionError, match="planned"):
        write_gguf_file(tmp_path / "out.gguf", "llama", _metadata, [short])
    assert list(tmp_path.iterdir()) == []
