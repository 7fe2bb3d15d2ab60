"""The rwkv family's memory description: a fixed RNN state instead of a KV cache, shapes read
from a .pth checkpoint's tensor index (no weights loaded)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from openllm_hub_rwkv.checkpoint import read_pth_index
from openllm_hub_rwkv.memory import PUBLISHED, read
from openllm_hub_rwkv.spec import analyse

from openllm_hub.cli import main
from openllm_hub.core.plan import parse_gpus, plan


def test_published_raven_7b() -> None:
    spec = PUBLISHED["rwkv-4-raven-7b"]
    rwkv = plan(spec, parse_gpus("1x24G")).requested.estimate
    assert rwkv.kv_cache_bytes < 10 * 2**20  # a fixed RNN state, not a KV cache
    assert 0.9 < spec.n_params / 7e9 < 1.15


def test_tiny_checkpoints_of_every_version(ckpt: dict[str, Path], capsys: Any) -> None:
    for version, path in ckpt.items():
        index = read_pth_index(path)
        arch = analyse(index.tensors, where=path, extras=index.extras)
        spec = read(path, "rwkv-pth")
        assert (spec.num_layers, spec.hidden_size, spec.vocab_size) == (arch.n_layer, arch.n_embd, arch.vocab_size)
        assert abs(spec.n_params - arch.parameters) <= 2 * arch.n_embd, version  # ln0 counted as a final norm
        assert not spec.attention and spec.state_elements > 0
        assert main(["plan", str(path), "--gpus", "1x2G", "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["family"] == "rwkv" and out["fits"] is True
        assert out["per_gpu"]["kv_cache_gib"] < 0.01
