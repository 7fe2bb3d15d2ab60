"""Device specs to strategy strings; every string we build is one the package accepts; the
resolved strategy shows in ``openllm-hub info``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from openllm_hub_rwkv.strategy import parse_strategy, strategy_from_placement

from openllm_hub.cli import main
from openllm_hub.core.device import Placement


def _package_regex() -> re.Pattern[str]:
    """The strategy check in rwkv's own RWKV.__init__, read from the installed source."""
    import importlib.util

    spec = importlib.util.find_spec("rwkv.model")
    assert spec is not None and spec.origin is not None
    source = Path(spec.origin).read_text(encoding="utf-8")
    m = re.search(r'STRATEGY_REGEX = r"([^"]+)"', source)
    assert m is not None, "rwkv.model no longer defines STRATEGY_REGEX"
    return re.compile(m.group(1))


def _cuda(dtype: str = "fp16", ids: tuple[int, ...] = (0,), layers: int | None = None) -> Placement:
    return Placement(kind="cuda", dtype=dtype, gpu_ids=ids, gpu_layers=layers)


@pytest.mark.parametrize(("placement", "kw", "expected"), [
    (Placement(kind="cpu", dtype="fp32"), {}, "cpu fp32"),
    (Placement(kind="cpu", dtype="bf16"), {}, "cpu bf16"),
    (Placement(kind="cpu", dtype="fp32"), {"int8": True}, "cpu fp32i8"),
    (_cuda(), {}, "cuda fp16"),
    (_cuda("bf16", (1,)), {}, "cuda:1 bf16"),
    (_cuda(), {"int8": True}, "cuda fp16i8"),
    (_cuda(ids=(0, 1)), {}, "cuda:0 fp16 -> cuda:1 fp16"),
    (_cuda(layers=10), {}, "cuda fp16 *10 -> cpu fp32"),
    (_cuda(layers=10), {"int8": True}, "cuda fp16i8 *10 -> cpu fp32i8"),
    (_cuda(layers=10), {"stream": True}, "cuda fp16 *10+"),
    (_cuda(layers=-1), {}, "cuda fp16"),
    (_cuda(layers=99), {}, "cuda fp16"),
    (_cuda(layers=0), {}, "cpu fp32"),
])
def test_placement_to_strategy(placement: Placement, kw: dict[str, bool], expected: str) -> None:
    strategy = strategy_from_placement(placement, n_layer=24, **kw)
    assert str(strategy) == expected
    assert _package_regex().match(str(strategy)), "the package would refuse this strategy"
    assert str(parse_strategy(str(strategy))) == expected  # parse/format round trip


def test_parse_normalises_spacing() -> None:
    s = parse_strategy("  cuda:0  fp16i8 *8+->cpu fp32 ")
    assert str(s) == "cuda:0 fp16i8 *8+ -> cpu fp32"
    assert s.int8 and s.uses_cuda and s.device_label() == "cuda:0+cpu"


def test_info_shows_resolved_strategy(ckpt: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(ckpt["6"]), "--device", "cpu", "--json", "-o", "strategy=cpu fp32 *1 -> cpu bf16"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["family"] == "rwkv" and info["engine"] == "rwkv"
    assert info["extra"]["strategy"] == "cpu fp32 *1 -> cpu bf16" and info["extra"]["rwkv_version"] == "6"
    assert info["extra"]["trained_context"] == 1024  # from the file name's ctx1024
    assert main(["info", str(ckpt["4"]), "--device", "cpu", "--dtype", "bf16"]) == 0
    assert "'strategy': 'cpu bf16'" in capsys.readouterr().out
