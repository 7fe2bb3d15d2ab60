"""Meta consolidated shards <-> HuggingFace folders.

The Meta side is built by ``make_tiny_meta`` together with an HF twin holding the same
weights, permuted with HuggingFace's own conversion formula (written in tiny.py, not taken
from the converter), so meta -> hf is checked against an independent construction.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from llama_reference import GGUFReference, HFReference, relative_diff
from openllm_hub_llama.convert_meta import meta_to_hf_cached
from safetensors.torch import load_file

import openllm_hub
from openllm_hub.core.io import TMP_MARK

META_CASES: dict[str, dict[str, Any]] = {
    # 2 shards, grouped-query attention, bf16 (as Meta ships Llama-2)
    "gqa-2": {"n_shards": 2, "num_kv_heads": 2, "rms_norm_eps": 1e-5, "rope_theta": 20000.0},
    # 3 shards: uneven splits (vocab 32000 and dim 64 do not divide by 3), LLaMA-1 eps
    "mha-3-uneven": {"n_shards": 3, "intermediate_size": 160},
}


def _hf_state(folder: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        state.update(load_file(f))
    return state


def _no_leftovers(parent: Path) -> None:
    assert not [p for p in parent.iterdir() if p.name.startswith(TMP_MARK)]


@pytest.mark.parametrize("case", list(META_CASES))
def test_meta_to_hf_equals_the_hf_twin(case: str, tmp_path: Path,
                                       tiny_meta_factory: Callable[..., tuple[Path, Path]]) -> None:
    meta, twin = tiny_meta_factory(**META_CASES[case])
    out = tmp_path / "hf"
    res = openllm_hub.convert(meta, out, to="hf", verify=False, options={"max_shard_size": 3_000_000})
    assert res.source_format == "meta" and res.outtype == "auto"
    # sharded output with an index, like save_pretrained
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    got, want = _hf_state(out), _hf_state(twin)
    assert set(got) == set(want)
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype == torch.bfloat16
        assert torch.equal(got[name], tensor), name
    cfg, twin_cfg = json.loads((out / "config.json").read_text()), json.loads((twin / "config.json").read_text())
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                "num_hidden_layers", "rms_norm_eps", "rope_theta", "vocab_size", "tie_word_embeddings"):
        assert cfg[key] == twin_cfg[key], key
    assert (out / "tokenizer.model").read_bytes() == (meta / "tokenizer.model").read_bytes()
    _no_leftovers(tmp_path)


def test_meta_to_hf_gives_the_twins_logits(tmp_path: Path,
                                           tiny_meta_factory: Callable[..., tuple[Path, Path]]) -> None:
    """Same weights -> transformers produces identical logits for converted and twin folders."""
    meta, twin = tiny_meta_factory(**META_CASES["gqa-2"])
    out = tmp_path / "hf"
    openllm_hub.convert(meta, out, to="hf", verify=False)
    ids = [1, 450, 4996, 17354, 1701, 432, 17204, 975, 278, 17366, 11203]
    a, b = HFReference(out).logits(ids), HFReference(twin).logits(ids)
    assert np.ptp(a) > 10
    assert np.array_equal(a, b)  # bit-identical weights, same code: no tolerance needed


@pytest.mark.parametrize("case", list(META_CASES))
def test_meta_hf_meta_round_trip_is_bit_identical(case: str, tmp_path: Path,
                                                  tiny_meta_factory: Callable[..., tuple[Path, Path]]) -> None:
    meta, _ = tiny_meta_factory(**META_CASES[case])
    n = META_CASES[case]["n_shards"]
    hf, back = tmp_path / "hf", tmp_path / "meta"
    openllm_hub.convert(meta, hf, to="hf", verify=False)
    openllm_hub.convert(hf, back, to="meta", verify=False, options={"shards": n})
    assert json.loads((back / "params.json").read_text()) == json.loads((meta / "params.json").read_text())
    assert (back / "params.json").read_bytes() == (meta / "params.json").read_bytes()
    assert sorted(p.name for p in back.iterdir()) == sorted(p.name for p in meta.iterdir())
    for i in range(n):
        a = torch.load(meta / f"consolidated.{i:02d}.pth", weights_only=True)
        b = torch.load(back / f"consolidated.{i:02d}.pth", weights_only=True)
        assert set(a) == set(b)
        for name in a:
            assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), (i, name)


def test_meta_to_gguf_matches_transformers_on_the_twin(tmp_path: Path,
                                                        tiny_meta_factory: Callable[..., tuple[Path, Path]]) -> None:
    """meta -> gguf (through a temporary HF folder) run by llama.cpp vs transformers on the twin;
    bound as for hf -> gguf F32 (see test_convert_gguf.py): measured ~3e-6."""
    meta, twin = tiny_meta_factory(**META_CASES["gqa-2"])
    out = tmp_path / "m.gguf"
    openllm_hub.convert(meta, out, to="gguf", outtype="f32", verify=False)
    _no_leftovers(tmp_path)
    ids = [1, 450, 4996, 17354, 1701, 432, 17204, 975, 278, 17366, 11203]
    ref = HFReference(twin).logits(ids)
    g = GGUFReference(out, n_ctx=32)
    got = g.logits(ids)
    g.close()
    assert relative_diff(ref, got) < 2e-5


def test_meta_to_hf_cached_converts_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         tiny_meta_factory: Callable[..., tuple[Path, Path]]) -> None:
    import shutil

    monkeypatch.setenv("OPENLLM_HUB_CACHE_DIR", str(tmp_path / "cache"))
    src = tmp_path / "meta"
    shutil.copytree(tiny_meta_factory(**META_CASES["gqa-2"])[0], src)
    first = meta_to_hf_cached(src)
    assert first.parent == tmp_path / "cache" / "meta-hf"
    stamp = (first / "config.json").stat().st_mtime_ns
    assert meta_to_hf_cached(src) == first
    assert (first / "config.json").stat().st_mtime_ns == stamp  # reused, not rewritten
    shard = src / "consolidated.01.pth"
    os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 10**9))
    assert meta_to_hf_cached(src) != first  # changed source: converted again
    _no_leftovers(tmp_path / "cache" / "meta-hf")
