"""The planner reproduces GLM-130B's hardware table from its config and rejects what cannot fit."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any

import pytest
from openllm_hub_glm130b.config import GLM_130B
from openllm_hub_glm130b.planner import BUILTIN, GIB, parse_gpus, plan, resolve_spec, spec_from_glm

from openllm_hub.errors import InvalidParameterError

GLM = BUILTIN["glm-130b"]

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


def test_chatglm_6b_int4_needs_about_6_gb() -> None:
    e = plan(BUILTIN["chatglm-6b"], parse_gpus("1x24G"), quantize=4).requested.estimate
    # ChatGLM-6B's README: INT4 inference from 6 GB of GPU memory
    assert 5.0 * GIB < e.total_bytes < 7.0 * GIB
    assert 3.3 * GIB < e.weights_bytes < 4.0 * GIB  # 6.2B params: INT4 layers + fp16 embedding


def test_other_families() -> None:
    assert plan(BUILTIN["llama-65b"], parse_gpus("8x24G")).fits  # 130 GB fp16 over 8 GPUs
    assert not plan(BUILTIN["llama-65b"], parse_gpus("1x80G")).fits
    assert plan(BUILTIN["llama-7b"], parse_gpus("1x24G")).fits
    assert not plan(BUILTIN["llama-13b"], parse_gpus("1x24G")).fits  # 26 GB of fp16 weights
    rwkv = plan(BUILTIN["rwkv-4-raven-7b"], parse_gpus("1x24G")).requested.estimate
    assert rwkv.kv_cache_bytes < 10 * 2**20  # a fixed RNN state, not a KV cache
    for name in ("llama-7b", "llama-13b", "llama-30b", "llama-65b", "rwkv-4-raven-7b"):
        nominal = float(name.split("-")[-1].rstrip("b"))
        assert 0.9 < BUILTIN[name].n_params / 1e9 / nominal < 1.15


def test_bad_gpu_specs() -> None:
    assert parse_gpus("8xA100") == parse_gpus("8x40GB")
    for bad in ("8", "x40G", "8x", "0x40G", "8xfoo"):
        with pytest.raises(InvalidParameterError):
            parse_gpus(bad)


def test_checkpoint_and_config_inputs(tiny: Any, tmp_path: Any) -> None:
    spec = resolve_spec(str(tiny.path))
    assert spec.num_layers == 3 and spec.vocab_size == tiny.config.vocab_size
    hf = tmp_path / "config.json"
    hf.write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 32, "hidden_size": 4096,
                              "num_attention_heads": 32, "vocab_size": 32000, "intermediate_size": 11008}))
    assert resolve_spec(str(hf)).n_params == BUILTIN["llama-7b"].n_params


def test_plan_command_json(capsys: Any) -> None:
    from openllm_hub_glm130b.plugin import register_commands

    parser = argparse.ArgumentParser(prog="openllm-hub")
    register_commands(parser.add_subparsers())
    args = parser.parse_args(["plan", "glm-130b", "--gpus", "8x32G", "--quantize", "int8", "--json"])
    assert args.handler(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["fits"] is True and out["tp"] == 8 and out["quantization"] == "int8"
    assert set(out["per_gpu"]) >= {"weights_gib", "kv_cache_gib", "activations_gib", "total_gib", "capacity_gib"}
    args = parser.parse_args(["plan", "glm-130b", "--gpus", "8x32G"])
    assert args.handler(args) == 1
    assert "DOES NOT FIT" in capsys.readouterr().out


def test_planner_imports_no_torch() -> None:
    code = ("import sys; import openllm_hub_glm130b.planner, openllm_hub_glm130b.plugin; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
