"""Negative controls: a deliberately broken RWKV conversion (.pth -> HF and back) fails its
``--verify`` (one layer-0 weight of the output scaled by 2 before verification)."""

from __future__ import annotations

import shutil
from pathlib import Path

import openllm_hub
from openllm_hub.testing import check_verify_catches_broken_conversion


def test_pth_to_hf_broken_fails_verify(ckpt: dict[str, Path], tmp_path: Path) -> None:
    why = check_verify_catches_broken_conversion(ckpt["4"], tmp_path / "hf", to="hf", outtype="f32")
    assert "FAIL" in why


def test_hf_to_pth_broken_fails_verify(ckpt: dict[str, Path], tmp_path: Path) -> None:
    hf = openllm_hub.convert(ckpt["4"], tmp_path / "hf", to="hf", progress=False).path
    out = tmp_path / "back"
    out.mkdir()
    # a .pth carries no tokenizer: keep the BPE file beside it, as ChatRWKV does
    shutil.copy(hf / "tokenizer.json", out / "20B_tokenizer.json")
    why = check_verify_catches_broken_conversion(hf, out / "back.pth", to="rwkv-pth", outtype="auto")
    assert "FAIL" in why
