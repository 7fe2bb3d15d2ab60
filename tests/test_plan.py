"""The core memory planner: GPU and memory parsing, plans from a family's memory description
(the example bigram plugin's), ``plan`` writing nothing, and ``load()``'s early refusal."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from openllm_hub.cli import main
from openllm_hub.core.device import Placement
from openllm_hub.core.plan import (
    GIB,
    MEMORY_ENV,
    GPUs,
    ModelSpec,
    estimate,
    floor_estimate,
    parse_gpus,
    parse_memory,
    plan,
    refuse_if_too_big,
)
from openllm_hub.errors import IncompatibleDeviceError, InvalidParameterError


def _dense(layers: int = 4, hidden: int = 1024, vocab: int = 1000) -> ModelSpec:
    h = hidden
    return ModelSpec(name="dense", family="test", num_layers=layers, hidden_size=h, num_heads=8, vocab_size=vocab,
                     max_seq=512, layer_matrices=((3 * h, h), (h, h), (4 * h, h), (h, 4 * h)), layer_small=4 * h,
                     embedding_params=vocab * h, mlp_width=4 * h, kv_per_token_layer=2 * h)


def test_parse_gpus_and_memory() -> None:
    assert parse_gpus("8xA100") == parse_gpus("8x40GB") == GPUs(8, 40.0)
    for bad in ("8", "x40G", "8x", "0x40G", "8xfoo"):
        with pytest.raises(InvalidParameterError):
            parse_gpus(bad)
    assert parse_memory("1024") == 1024
    assert parse_memory("512K") == 512 * 1024
    assert parse_memory("24G") == parse_memory("24GiB") == 24 * GIB
    assert parse_memory("1.5g") == int(1.5 * GIB)
    with pytest.raises(InvalidParameterError):
        parse_memory("lots")


def test_estimate_parts() -> None:
    spec = _dense()
    fp16, int4 = estimate(spec, tp=1), estimate(spec, tp=1, bits=4)
    assert fp16.weights_bytes == 2 * spec.n_params
    assert int4.weights_bytes < fp16.weights_bytes / 2
    assert fp16.kv_cache_bytes == 512 * 4 * 2 * 1024 * 2  # seq * layers * (K+V) * hidden * fp16
    assert estimate(spec, tp=2).kv_cache_bytes == fp16.kv_cache_bytes // 2
    floor = floor_estimate(spec, dtype_bytes=2, offload=False)
    assert floor.total_bytes < int4.total_bytes and floor.seq == 1 and floor.reserve_bytes == 0
    assert floor_estimate(spec, dtype_bytes=2, offload=True).weights_bytes < floor.weights_bytes


def test_stored_bits_are_the_default_and_the_ceiling() -> None:
    from dataclasses import replace

    q8 = replace(_dense(), stored_bits=8)
    p = plan(q8, GPUs(1, 80.0))
    assert p.requested.estimate.quantization == "int8"
    assert {o.estimate.bits for o in p.proposals} == {8, 4}  # no fp16 layout for an INT8 checkpoint


def test_plan_of_the_example_plugin(bigram_path: Path, capsys: Any) -> None:
    assert main(["plan", str(bigram_path), "--gpus", "1x1G", "--json"]) == 1  # the 1 GiB reserve fills it
    assert json.loads(capsys.readouterr().out)["fits"] is False
    assert main(["plan", "bigram-stories", "--gpus", "1x2G", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["family"] == "bigram" and out["fits"] is True and out["quantization"] == "fp32"
    assert out["parameters"] == 258 * 258
    assert [p["quantization"] for p in out["proposals"]] == ["fp32"]  # a table: nothing to quantize
    assert main(["plan", "bigram-stories"]) == 0  # this machine (GPUs, else its RAM)
    assert "bigram" in capsys.readouterr().out


def _snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                st = os.stat(os.path.join(dirpath, name))
                out[os.path.join(dirpath, name)] = (st.st_mtime_ns, st.st_size)
            out[dirpath] = (os.stat(dirpath).st_mtime_ns, 0)
    return out


def test_plan_writes_nothing(bigram_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: Any) -> None:
    cache, config = tmp_path / "cache", Path(os.environ["OPENLLM_HUB_CONFIG_DIR"])
    cache.mkdir()
    monkeypatch.setenv("OPENLLM_HUB_CACHE_DIR", str(cache))
    monkeypatch.chdir(tmp_path)
    before = _snapshot(bigram_path.parent, cache, config, tmp_path)
    assert main(["plan", str(bigram_path), "--gpus", "2x24G"]) == 0
    assert main(["plan", "bigram-stories", "--json"]) == 0
    assert _snapshot(bigram_path.parent, cache, config, tmp_path) == before
    assert "FITS" in capsys.readouterr().out


def test_a_family_without_a_memory_description_is_not_planned_or_checked(tmp_path: Path) -> None:
    placement = Placement(kind="cpu", dtype="fp32")
    refuse_if_too_big(None, tmp_path, "x", placement)  # nothing to ask: no refusal


def test_load_refuses_early_with_the_numbers(bigram_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import openllm_hub

    monkeypatch.setenv(MEMORY_ENV, "100K")  # a device with 100 KiB; the table alone is 260 KiB
    with pytest.raises(IncompatibleDeviceError) as info:
        openllm_hub.load(bigram_path, device="cpu")
    text = info.value.render()
    assert "needs at least 269.09 KiB" in text and "weights 260.02 KiB" in text
    assert "has 100.00 KiB" in text and "openllm-hub plan" in text
    monkeypatch.setenv(MEMORY_ENV, "off")
    openllm_hub.load(bigram_path, device="cpu").close()
    monkeypatch.setenv(MEMORY_ENV, "1M")
    openllm_hub.load(bigram_path, device="cpu").close()
    monkeypatch.delenv(MEMORY_ENV)
    openllm_hub.load(bigram_path, device="cpu").close()  # this machine's RAM: no refusal


def test_refusal_is_conservative(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    spec = _dense(layers=8, hidden=2048)  # fp16 ~ 0.8 GB, INT4 floor ~ 0.2 GB

    def memory(path: Path, fmt: str) -> ModelSpec:
        return spec

    cpu = Placement(kind="cpu", dtype="fp16")
    monkeypatch.setenv(MEMORY_ENV, "400M")  # less than fp16 needs, more than the floor: no refusal
    refuse_if_too_big(memory, tmp_path, "x", cpu)
    monkeypatch.setenv(MEMORY_ENV, "100M")
    with pytest.raises(IncompatibleDeviceError, match=r"needs at least .* MiB even with 4-bit weights"):
        refuse_if_too_big(memory, tmp_path, "x", cpu)
    # layers offloaded with gpu_layers: the GPU holds what the user chose, nothing to refuse
    refuse_if_too_big(memory, tmp_path, "x", Placement(kind="cuda", dtype="fp16", gpu_ids=(0,), gpu_layers=2))

    def unreadable(path: Path, fmt: str) -> ModelSpec:
        raise InvalidParameterError("config.json lacks 'hidden_size'", where=path)

    refuse_if_too_big(unreadable, tmp_path, "x", cpu)  # the loader reports a broken config, not the planner
