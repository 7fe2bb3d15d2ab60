"""Negative controls: a deliberately broken conversion fails its ``--verify`` (every LLaMA converter).

The conversion runs for real; then one layer-0 weight of its output is scaled by 2 (as a converter
bug would), and the verification, which compares the source's and the output's logits, must refuse
and leave nothing at the destination. A verify that passed here could not catch a real bug.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from openllm_hub.testing import check_verify_catches_broken_conversion


@pytest.mark.parametrize(("source", "to", "outtype", "dst"), [
    ("hf", "gguf", "f32", "m.gguf"),
    ("hf", "gguf", "q8_0", "m.gguf"),
    ("hf", "meta", "auto", "meta"),
    ("meta", "hf", "auto", "hf"),
    ("meta", "gguf", "f16", "m.gguf"),
])
def test_broken_conversion_fails_verify(source: str, to: str, outtype: str, dst: str, tmp_path: Path,
                                        tiny_hf_factory: Callable[..., Path],
                                        tiny_meta_factory: Callable[..., tuple[Path, Path]]) -> None:
    src = tiny_hf_factory() if source == "hf" else tiny_meta_factory(n_shards=2)[0]
    why = check_verify_catches_broken_conversion(src, tmp_path / dst, to=to, outtype=outtype)
    assert "FAIL" in why
