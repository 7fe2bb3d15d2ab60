"""``openllm_hub.convert(..., verify=True)``: the SDK loads both sides with the LLaMA engines,
compares logits and greedy tokens, and reports; the bounds are the plugin's per-outtype ones."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import openllm_hub


@pytest.mark.parametrize(("source", "to", "outtype"), [
    ("hf", "gguf", "f32"),
    ("meta", "hf", "auto"),
    ("meta", "gguf", "f32"),
    ("hf", "meta", "auto"),
])
def test_verified_conversion(source: str, to: str, outtype: str, tmp_path: Path,
                             tiny_hf_factory: Callable[..., Path],
                             tiny_meta_factory: Callable[..., tuple[Path, Path]]) -> None:
    src = tiny_hf_factory(num_kv_heads=2) if source == "hf" else tiny_meta_factory(n_shards=2, num_kv_heads=2)[0]
    out = tmp_path / ("out.gguf" if to == "gguf" else "out")
    res = openllm_hub.convert(src, out, to=to, outtype=outtype, verify=True)
    report = res.verify
    assert report is not None and report.passed, report
    assert report.bound is not None and report.relative_diff <= report.bound
    assert report.greedy_equal and len(report.greedy_a) == 16
    assert report.logit_scale > 10  # informative logits, not near-uniform
    assert out.exists()
