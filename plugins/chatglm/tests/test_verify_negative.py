"""Negative control: a deliberately broken ChatGLM -> GGUF conversion fails its ``--verify``
(one layer-0 weight of the written GGUF scaled by 2 before verification)."""

from __future__ import annotations

from pathlib import Path

import pytest

from openllm_hub.testing import check_verify_catches_broken_conversion


@pytest.mark.parametrize(("fixture", "outtype"), [("v2_dir", "f32"), ("v3_dir", "f16")])
def test_broken_conversion_fails_verify(fixture: str, outtype: str, request: pytest.FixtureRequest,
                                        tmp_path: Path) -> None:
    src = request.getfixturevalue(fixture)
    why = check_verify_catches_broken_conversion(src, tmp_path / "m.gguf", to="gguf", outtype=outtype)
    assert "FAIL" in why
