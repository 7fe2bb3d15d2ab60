"""Negative controls: a deliberately broken GLM-130B re-split or quantization fails its ``--verify``
(one layer-0 weight of the written shards scaled by 2 before verification), and every outtype of
the converter has a bound (a report without one never passes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from openllm_hub import convert
from openllm_hub.testing import check_verify_catches_broken_conversion


@pytest.mark.parametrize("outtype", ["auto", "int8", "int4"])
def test_broken_conversion_fails_verify(outtype: str, smooth: Any, tmp_path: Path) -> None:
    why = check_verify_catches_broken_conversion(smooth.path, tmp_path / "out", to="sat", outtype=outtype,
                                                 options={"tp": 1})
    assert "FAIL" in why


@pytest.mark.parametrize("outtype", ["int8", "int4"])
def test_quantized_conversion_verifies_within_its_bound(outtype: str, smooth: Any, tmp_path: Path) -> None:
    res = convert(smooth.path, tmp_path / outtype, to="sat", outtype=outtype, verify=True, options={"tp": 1})
    assert res.verify is not None and res.verify.bound is not None and res.verify.passed, res.verify
