"""The chatglm family's memory description: ChatGLM-6B's published size, and the tiny v1, v2,
v3 and GGUF checkpoints planned from config alone."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from openllm_hub_chatglm.memory import PUBLISHED, read
from openllm_hub_chatglm.spec import read_spec

from openllm_hub.cli import main
from openllm_hub.core.plan import GIB, parse_gpus, plan


def test_chatglm_6b_int4_needs_about_6_gb() -> None:
    e = plan(PUBLISHED["chatglm-6b"], parse_gpus("1x24G"), quantize=4).requested.estimate
    # ChatGLM-6B's README: INT4 inference from 6 GB of GPU memory
    assert 5.0 * GIB < e.total_bytes < 7.0 * GIB
    assert 3.3 * GIB < e.weights_bytes < 4.0 * GIB  # 6.2B params: INT4 layers + fp16 embedding


def test_tiny_checkpoints(v1_dir: Path, v2_dir: Path, v3_dir: Path) -> None:
    for folder in (v1_dir, v2_dir, v3_dir):
        cfg = json.loads((folder / "config.json").read_text())
        truth = read_spec(folder, cfg)
        spec = read(folder, "hf")
        assert (spec.num_layers, spec.hidden_size, spec.vocab_size) == (truth.num_layers, truth.hidden_size,
                                                                        truth.vocab_size)
        assert spec.kv_per_token_layer == 2 * truth.num_kv_heads * truth.head_dim  # multi-query in v2/v3
        if truth.version > 1:  # v1's output layer shares the embedding in memory
            assert abs(spec.n_params - truth.parameter_count()) <= 2 * truth.hidden_size


def test_plan_command(v2_dir: Path, make_gguf: Callable[[str, str], Path], capsys: Any) -> None:
    gguf = make_gguf("v2_dir", "f32")
    for model in (v2_dir, gguf):
        assert main(["plan", str(model), "--gpus", "1x2G", "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["family"] == "chatglm" and out["fits"] is True
    assert read(gguf, "gguf").n_params == read(v2_dir, "hf").n_params
    assert read(gguf, "gguf").dtype_bytes == 4  # an f32 file
