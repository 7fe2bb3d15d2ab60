"""The GGUF cache runs the caller's own converter and quantizer: no detection, no registry,
no public API in between; files are made once and reused; a bad scheme writes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from openllm_hub.core.convert import Converter, ConvertRequest
from openllm_hub.core.device import DeviceSupport
from openllm_hub.core.family import Family
from openllm_hub.core.io import TMP_MARK
from openllm_hub.core.quantize import Quantizer, QuantizeRequest
from openllm_hub.core.registry import get_registry
from openllm_hub.engines.llama_cpp_cache import cached_gguf
from openllm_hub.errors import InvalidParameterError


def _family(calls: list[str]) -> Family:
    """A family that no registry knows, whose converter and quantizer record their calls."""

    def convert(req: ConvertRequest) -> None:
        calls.append(f"convert {req.source_format} {req.outtype} {dict(req.options)}")
        req.dst.write_bytes(f"GGUF {req.outtype} of {req.src.name}".encode())

    def quantize(req: QuantizeRequest) -> None:
        calls.append(f"quantize {req.src.name.rsplit('-', 1)[-1]} {req.scheme}")
        req.dst.write_bytes(req.src.read_bytes() + f" as {req.scheme}".encode())

    return Family(name="cachetest", formats=("hf", "gguf"), detect=lambda probe: None,
                  load=lambda req: None,  # type: ignore[arg-type,return-value]
                  devices=(DeviceSupport("cpu", ("fp32",)),),
                  converters=(Converter("hf", "gguf", convert, outtypes=("f32", "f16")),),
                  quantizers=(Quantizer("gguf", ("q4_0", "bf16"), quantize),))


def test_made_once_with_the_family_s_own_objects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENLLM_HUB_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text("{}")  # detected by no family: the cache must not ask
    calls: list[str] = []
    fam = _family(calls)
    assert "cachetest" not in get_registry().families

    q4 = cached_gguf(folder, fam, scheme="q4_0", convert_options={"variant": "x"})
    assert q4.parent == tmp_path / "cache" / "cachetest-gguf" and q4.read_bytes() == b"GGUF f16 of ckpt as q4_0"
    assert calls == ["convert hf f16 {'variant': 'x'}", "quantize f16.gguf q4_0"]
    f16 = cached_gguf(folder, fam, scheme="f16", convert_options={"variant": "x"})
    assert cached_gguf(folder, fam, scheme="q4_0", convert_options={"variant": "x"}) == q4
    assert f16.read_bytes() == b"GGUF f16 of ckpt" and len(calls) == 2  # both reused
    bf16 = cached_gguf(folder, fam, scheme="bf16")  # from f32 (other options: another entry)
    assert bf16.read_bytes() == b"GGUF f32 of ckpt as bf16" and calls[2:] == ["convert hf f32 {}",
                                                                             "quantize f32.gguf bf16"]
    assert not [p for p in (tmp_path / "cache" / "cachetest-gguf").iterdir() if p.name.startswith(TMP_MARK)]


def test_unknown_scheme_or_source_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENLLM_HUB_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "ckpt"
    folder.mkdir()
    calls: list[str] = []
    with pytest.raises(InvalidParameterError, match=r"unknown quantization type 'q9_9'.*valid types: bf16, q4_0"):
        cached_gguf(folder, _family(calls), scheme="q9_9")
    with pytest.raises(InvalidParameterError, match="no converter from meta to gguf"):
        cached_gguf(folder, _family(calls), source_format="meta")
    assert calls == [] and not (tmp_path / "cache").exists()
