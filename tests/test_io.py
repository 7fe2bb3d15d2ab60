"""Atomic outputs, destination checks and safe checkpoint loading."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from openllm_hub.core.io import (
    TMP_MARK,
    atomic_output,
    check_destination,
    load_torch_checkpoint,
    read_safetensors_header,
)
from openllm_hub.errors import CorruptFileError, DestinationExistsError, UnsafeCheckpointError


def test_atomic_output_renames_only_on_success(tmp_path: Path) -> None:
    dst = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), atomic_output(dst) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert not dst.exists() and not any(TMP_MARK in p.name for p in tmp_path.iterdir())
    with atomic_output(dst) as tmp:
        tmp.write_bytes(b"whole")
    assert dst.read_bytes() == b"whole"


def test_atomic_dir_and_force(tmp_path: Path) -> None:
    dst = tmp_path / "folder"
    with atomic_output(dst, is_dir=True) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(DestinationExistsError):
        with atomic_output(dst, is_dir=True):
            pass
    with pytest.raises(ValueError), atomic_output(dst, is_dir=True, force=True) as tmp:
        (tmp / "b").write_text("2")
        raise ValueError
    assert (dst / "a").exists(), "a failed forced write must leave the old output intact"
    with atomic_output(dst, is_dir=True, force=True) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in dst.iterdir()) == ["b"]


def test_destination_rules(tmp_path: Path) -> None:
    src = tmp_path / "model"
    src.mkdir()
    with pytest.raises(DestinationExistsError, match="overwrite an input"):
        check_destination(src, sources=[src], force=True)
    with pytest.raises(DestinationExistsError, match="overwrite an input"):
        check_destination(src / "inside.gguf", sources=[src])
    (tmp_path / "x").write_text("")
    with pytest.raises(DestinationExistsError, match="already exists"):
        check_destination(tmp_path / "x")
    assert check_destination(tmp_path / "x", force=True) == tmp_path / "x"


def _safetensors(path: Path, header: dict[str, object], data: bytes) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def test_safetensors_header_checks(tmp_path: Path) -> None:
    good = tmp_path / "good.safetensors"
    _safetensors(good, {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8)
    assert "w" in read_safetensors_header(good)
    short = tmp_path / "short.safetensors"
    _safetensors(short, {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4)
    with pytest.raises(CorruptFileError, match="past the end"):
        read_safetensors_header(short)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", 10_000) + b"{}")
    with pytest.raises(CorruptFileError, match="header length"):
        read_safetensors_header(bad)


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return (os.system, ("touch PWNED_BY_PICKLE",))


def test_pickle_with_code_is_refused_without_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.bin"
    torch.save({"w": torch.zeros(2), "payload": _Evil()}, path)
    with pytest.raises(UnsafeCheckpointError, match="code execution"):
        load_torch_checkpoint(path)
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()
    ok = tmp_path / "ok.bin"
    torch.save({"w": torch.arange(3.0)}, ok)
    assert load_torch_checkpoint(ok)["w"].tolist() == [0.0, 1.0, 2.0]
    trunc = tmp_path / "trunc.bin"
    trunc.write_bytes(ok.read_bytes()[:50])
    with pytest.raises(CorruptFileError):
        load_torch_checkpoint(trunc)
