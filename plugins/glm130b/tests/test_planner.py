"""The core planner, fed by this plugin's memory description, reproduces GLM-130B's hardware
table from its config and rejects what cannot fit."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from openllm_hub_glm130b.memory import PUBLISHED
from openllm_hub_glm130b.memory import spec_from_config as spec_from_glm
from openllm_hub_glm130b.spec import GLM_130B

from openllm_hub.core.plan import GIB, parse_gpus, plan
from openllm_hub.errors import InvalidParameterError

GLM = PUBLISHED["glm-130b"]

# GLM-130B README, "Hardware requirements": every row must fit as published.
TABLE = [
    ("8x40G", None, False),  # 8 x A100 40G, fp16
    ("8x32G", None, True),  # 8 x V100 32G, fp16 with weight offload (BMInf)
    ("8x32G", 8, False),  # 8 x V100 32G, INT8
    ("8x24G", 8, False),  # 8 x RTX 3090, INT8
    ("4x24G", 4, False),  # 4 x RTX 3090, INT4
    ("8x11G", 4, False),  # 8 x RTX 2080 Ti, INT4
]
MUST_NOT_FIT = [
    ("8x32G", None),  # V100 fp16 without offload: the fp16 weights alone are 30 GiB per GPU
    ("4x24G", 8),  # 4 x 3090 INT8: 30 GiB of INT8 weights per GPU
    ("8x11G", 8),  # 8 x 2080 Ti INT8: 15 GiB per GPU
    ("8x24G", None),  # 3090s in fp16
    ("4x40G", None),  # half the A100s in fp16
]


def test_builtin_config_matches_the_engine_config() -> None:
    assert GLM.n_params == GLM_130B.n_params() == spec_from_glm(GLM_130B).n_params
    assert 128e9 < GLM.n_params < 131e9  # "130B"


@pytest.mark.parametrize(("gpus", "bits", "offload"), TABLE)
def test_seed_table_rows_fit(gpus: str, bits: int | None, offload: bool) -> None:
    p = plan(GLM, parse_gpus(gpus), quantize=bits, offload=offload)
    assert p.fits, p.render()
    e = p.requested.estimate
    assert e.tp == int(gpus.split("x")[0])
    assert (e.offload_layers > 0) == offload
    # and the planner finds this layout itself: it is among its proposals
    assert any(o.estimate.bits == bits and (o.estimate.offload_layers > 0) == offload for o in p.proposals)


@pytest.mark.parametrize(("gpus", "bits"), MUST_NOT_FIT)
def test_rows_that_must_not_fit(gpus: str, bits: int | None) -> None:
    p = plan(GLM, parse_gpus(gpus), quantize=bits)
    assert not p.fits, p.render()
    assert p.requested.estimate.total_bytes > parse_gpus(gpus).memory_gib * GIB


def test_weights_per_gpu_are_a_tp_share() -> None:
    e8 = plan(GLM, parse_gpus("8x80G")).requested.estimate
    e4 = plan(GLM, parse_gpus("4x80G")).requested.estimate
    # fp16 weights: 2 bytes x 128.7e9 / TP, plus a few MB of replicated norms and biases
    assert abs(e8.weights_bytes - 2 * GLM.n_params / 8) < 0.05 * GIB
    assert abs(e4.weights_bytes / e8.weights_bytes - 2) < 0.01
    assert e4.kv_cache_bytes == 2 * e8.kv_cache_bytes


def test_recommendations() -> None:
    v100 = plan(GLM, parse_gpus("8xV100"))
    assert not v100.fits and v100.recommended is not None and v100.recommended.estimate.bits == 8
    assert any(o.estimate.bits is None and o.estimate.offload_layers > 0 for o in v100.proposals)
    ti = plan(GLM, parse_gpus("8x2080Ti"))
    assert ti.recommended is not None and ti.recommended.estimate.bits == 4
    assert plan(GLM, parse_gpus("8x40G")).recommended.estimate.bits is None  # type: ignore[union-attr]
    six = plan(GLM, parse_gpus("6x80G"))  # 6 divides the heads but not the vocabulary/MLP: TP=4
    assert six.requested.estimate.tp == 4 and six.notes


def test_bad_gpu_specs() -> None:
    assert parse_gpus("8xA100") == parse_gpus("8x40GB")
    for bad in ("8", "x40G", "8x", "0x40G", "8xfoo"):
        with pytest.raises(InvalidParameterError):
            parse_gpus(bad)


def test_checkpoint_and_config_inputs(tiny: Any) -> None:
    from openllm_hub_glm130b.memory import read

    spec = read(tiny.path, "sat")
    assert spec.num_layers == 3 and spec.vocab_size == tiny.config.vocab_size
    assert read(tiny.path / "glm130b_config.json", "sat").n_params == spec.n_params == tiny.config.n_params()


def test_plan_command_json(capsys: Any) -> None:
    from openllm_hub.cli import main

    assert main(["plan", "glm-130b", "--gpus", "8x32G", "--quantize", "int8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["fits"] is True and out["tp"] == 8 and out["quantization"] == "int8"
    assert set(out["per_gpu"]) >= {"weights_gib", "kv_cache_gib", "activations_gib", "total_gib", "capacity_gib"}
    assert main(["plan", "glm-130b", "--gpus", "8x32G"]) == 1
    assert "DOES NOT FIT" in capsys.readouterr().out


def test_plan_of_the_tiny_checkpoint(tiny: Any, capsys: Any) -> None:
    from openllm_hub.cli import main

    assert main(["plan", str(tiny.path), "--gpus", "2x2G", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["family"] == "glm130b" and out["tp"] == 2 and out["fits"] is True
    assert out["parameters"] == tiny.config.n_params()


def test_planner_imports_no_torch() -> None:
    code = ("import sys; import openllm_hub.core.plan, openllm_hub_glm130b.memory, openllm_hub_glm130b.plugin; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_load_refuses_early_through_the_memory_description(tiny: Any, monkeypatch: Any) -> None:
    from openllm_hub import load
    from openllm_hub.core.plan import MEMORY_ENV
    from openllm_hub.errors import IncompatibleDeviceError

    monkeypatch.setenv(MEMORY_ENV, "16K")  # before any shard is read: the config's shapes suffice
    with pytest.raises(IncompatibleDeviceError, match=r"this glm130b model .* needs at least .* KiB even with 4-bit"):
        load(tiny.path, device="cpu")
