"""SAT layout: how shards are cut (checked against hand-written slicing), repartition round
trips, detection, and clear errors on bad input before any rank computes."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from openllm_hub_glm130b.checkpoint import SatCheckpoint, repartition, shard_name
from openllm_hub_glm130b.launch import RunSpec, spawn
from openllm_hub_glm130b.ranks import EngineOptions, preflight
from openllm_hub_glm130b.spec import CONFIG_NAME

from openllm_hub import detect
from openllm_hub.errors import CorruptFileError, InvalidParameterError, NotFoundError, OpenLLMHubError


def test_shards_follow_megatron_glm_layout(tiny: Any) -> None:
    """Each rank of the mp=2 files holds exactly the slices the GLM-130B rules give."""
    cfg, full = tiny.config, tiny.full
    ck = SatCheckpoint.open(tiny.path)
    h, inner, heads, d = cfg.hidden_size, cfg.inner_hidden_size, cfg.num_attention_heads, cfg.head_dim
    for r in range(2):
        st = ck.state(r)
        p = "transformer.layers.1."
        v = cfg.vocab_size // 2
        emb = "transformer.word_embeddings.weight"
        assert torch.equal(st[emb], full[emb][r * v : (r + 1) * v])
        # qkv: whole heads, each head's q,k,v rows together
        rows = slice(r * heads // 2 * 3 * d, (r + 1) * heads // 2 * 3 * d)
        for name in ("attention.query_key_value.weight", "attention.query_key_value.bias"):
            assert torch.equal(st[p + name], full[p + name][rows])
        # GeGLU: this rank's part of x1 followed by its part of x2
        w = full[p + "mlp.dense_h_to_4h.weight"]
        half = inner // 2
        expect = torch.cat([w[r * half:(r + 1) * half], w[inner + r * half: inner + (r + 1) * half]])
        assert torch.equal(st[p + "mlp.dense_h_to_4h.weight"], expect)
        # row-parallel: input columns split, bias replicated
        cols = slice(r * h // 2, (r + 1) * h // 2)
        assert torch.equal(st[p + "attention.dense.weight"], full[p + "attention.dense.weight"][:, cols])
        cols = slice(r * half, (r + 1) * half)
        assert torch.equal(st[p + "mlp.dense_4h_to_h.weight"], full[p + "mlp.dense_4h_to_h.weight"][:, cols])
        for name in ("attention.dense.bias", "mlp.dense_4h_to_h.bias", "input_layernorm.weight",
                     "post_attention_layernorm.bias"):
            assert torch.equal(st[p + name], full[p + name])
        assert torch.equal(st["transformer.final_layernorm.weight"], full["transformer.final_layernorm.weight"])


def test_repartition_round_trip_is_lossless(tiny: Any, tmp_path: Path) -> None:
    one = repartition(tiny.path, tmp_path / "tp1", 1)
    four = repartition(one, tmp_path / "tp4", 4)
    two = repartition(four, tmp_path / "tp2", 2)
    st1 = SatCheckpoint.open(one).state(0)
    assert set(st1) == set(tiny.full)
    for k, v in tiny.full.items():
        assert torch.equal(st1[k], v), k
    a, b = SatCheckpoint.open(tiny.path), SatCheckpoint.open(two)
    assert b.tp == 2 and b.iteration.name == a.iteration.name
    for r in range(2):
        for k, v in a.state(r).items():
            assert torch.equal(b.state(r)[k], v), k
    assert (two / "tokenizer.model").read_bytes() == (tiny.path / "tokenizer.model").read_bytes()
    # 2 -> 4 directly equals 2 -> 1 -> 4
    direct = SatCheckpoint.open(repartition(tiny.path, tmp_path / "tp4b", 4))
    via = SatCheckpoint.open(four)
    for r in range(4):
        for k, v in via.state(r).items():
            assert torch.equal(direct.state(r)[k], v)


def test_detect_and_convert_api(tiny: Any, tmp_path: Path) -> None:
    from openllm_hub import convert

    fam, det = detect(tiny.path)
    assert (fam.name, det.format) == ("glm130b", "sat") and det.confidence > 0.9
    res = convert(tiny.path, tmp_path / "tp1", to="sat", options={"tp": 1}, verify=True)
    assert res.verify is not None and res.verify.passed and res.verify.greedy_equal
    assert SatCheckpoint.open(res.path).tp == 1


# ---- bad input ------------------------------------------------------------------------------
@pytest.fixture()
def copy(tiny: Any, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(tiny.path, dst)
    return dst


def _cfg(path: Path, **changes: Any) -> None:
    data = json.loads((path / CONFIG_NAME).read_text())
    data.update(changes)
    (path / CONFIG_NAME).write_text(json.dumps(data))


def test_missing_rank(copy: Path) -> None:
    (copy / "1000" / shard_name(1)).unlink()
    with pytest.raises(NotFoundError, match=r"missing shard\(s\) for rank 1 of a TP=2"):
        SatCheckpoint.open(copy)


def test_extra_rank_and_declared_tp(copy: Path) -> None:
    _cfg(copy, model_parallel_size=1)
    with pytest.raises(CorruptFileError, match=r"rank 1 but .* declares model_parallel_size=1"):
        SatCheckpoint.open(copy)


def test_shapes_disagree_with_declared_tp(tiny: Any, copy: Path, tmp_path: Path) -> None:
    four = repartition(tiny.path, tmp_path / "tp4", 4)
    for r in range(2):  # TP=4 shards under the names of a TP=2 checkpoint
        shutil.copyfile(four / "1000" / shard_name(r), copy / "1000" / shard_name(r))
    with pytest.raises(CorruptFileError, match=r"expected .* for TP=2 \(it looks like a TP=4 shard\)"):
        SatCheckpoint.open(copy)


def test_world_size_must_divide_heads(tiny: Any) -> None:
    with pytest.raises(InvalidParameterError, match="world of 3 ranks does not divide num_attention_heads=4"):
        preflight(tiny.path, 3, EngineOptions())
    # the launcher refuses in the parent, before starting any rank
    with pytest.raises(InvalidParameterError, match="does not divide"):
        spawn(RunSpec(str(tiny.path)), 3, print)


def test_mismatched_quantization_between_shards(tiny: Any, tmp_path: Path) -> None:
    q = repartition(tiny.path, tmp_path / "q", 2, bits=8)
    mixed = tmp_path / "mixed"
    shutil.copytree(q, mixed)
    shutil.copyfile(tiny.path / "1000" / shard_name(1), mixed / "1000" / shard_name(1))
    with pytest.raises(CorruptFileError, match=r"mismatched quantization between shards \(rank 0: INT8, rank 1: "
                                               r"floating point\)"):
        SatCheckpoint.open(mixed)
    _cfg(mixed, quantization_bit_width=None)
    shutil.copyfile(tiny.path / "1000" / shard_name(0), mixed / "1000" / shard_name(0))
    SatCheckpoint.open(mixed)  # consistent again
    _cfg(mixed, quantization_bit_width=4)
    with pytest.raises(CorruptFileError, match="declares quantization_bit_width=4"):
        SatCheckpoint.open(mixed)


def test_quantized_checkpoints_are_not_repartitioned(tiny: Any, tmp_path: Path) -> None:
    q = repartition(tiny.path, tmp_path / "q", 2, bits=4)
    with pytest.raises(InvalidParameterError, match="quantized shards are not repartitioned"):
        preflight(q, 1, EngineOptions())
    with pytest.raises(InvalidParameterError, match="already quantized"):
        repartition(q, tmp_path / "q1", 1)


def test_missing_files_and_bad_config(copy: Path) -> None:
    (copy / CONFIG_NAME).rename(copy / "other.json")
    with pytest.raises(NotFoundError, match="glm130b-init-config"):
        SatCheckpoint.open(copy)
    (copy / "other.json").rename(copy / CONFIG_NAME)
    _cfg(copy, num_attention_heads=5)
    with pytest.raises(InvalidParameterError, match="not a multiple of num_attention_heads"):
        SatCheckpoint.open(copy)
    _cfg(copy, num_attention_heads=4, num_layers=2)
    with pytest.raises(CorruptFileError, match="GLM-130B does not"):
        SatCheckpoint.open(copy)
    _cfg(copy, num_layers=3, hiden_size=3)
    with pytest.raises(InvalidParameterError, match="unknown config keys: hiden_size"):
        SatCheckpoint.open(copy)
    (copy / "latest").unlink()
    with pytest.raises(NotFoundError, match="no 'latest' file"):
        SatCheckpoint.open(copy)


def test_code_carrying_pickle_is_refused(copy: Path) -> None:
    class Evil:
        def __reduce__(self) -> Any:
            return (print, ("pwned",))

    torch.save({"module": {"x": Evil()}}, copy / "1000" / shard_name(0))
    with pytest.raises(OpenLLMHubError, match="code execution"):
        SatCheckpoint.open(copy)


def test_bad_load_options(tiny: Any) -> None:
    from openllm_hub import load

    with pytest.raises(InvalidParameterError, match="offload_layers names layer"):
        load(tiny.path, device="cpu", offload_layers=[7])
    with pytest.raises(InvalidParameterError, match="invalid load options"):
        load(tiny.path, device="cpu", quantize="int3")


# ---- CLI ------------------------------------------------------------------------------------
def _cli() -> argparse.ArgumentParser:
    from openllm_hub_glm130b.plugin import register_commands

    parser = argparse.ArgumentParser(prog="openllm-hub")
    register_commands(parser.add_subparsers())
    return parser


def test_init_config_and_repartition_commands(tiny: Any, tmp_path: Path, capsys: Any) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(tiny.path, bare)
    (bare / CONFIG_NAME).unlink()
    fam, det = detect(bare)
    assert fam.name == "glm130b" and det.confidence < 0.5
    args = _cli().parse_args(["glm130b-init-config", str(bare)])
    assert args.handler(args) == 0
    data = json.loads((bare / CONFIG_NAME).read_text())
    assert (data["num_layers"], data["hidden_size"], data["model_parallel_size"]) == (70, 12288, 2)
    args = _cli().parse_args(["glm130b-repartition", str(tiny.path), str(tmp_path / "out"), "--tp", "4",
                              "--quantize", "int8"])
    assert args.handler(args) == 0
    out = SatCheckpoint.open(tmp_path / "out")
    assert (out.tp, out.bits) == (4, 8)
    assert "TP=4" in capsys.readouterr().out


def test_load_refuses_early_with_the_planners_numbers(tiny: Any, monkeypatch: Any) -> None:
    from openllm_hub_glm130b import loader

    from openllm_hub import load
    from openllm_hub.errors import IncompatibleDeviceError

    monkeypatch.setattr(loader, "_available_ram", lambda: 100_000)  # a machine with 100 kB free
    with pytest.raises(IncompatibleDeviceError, match=r"needs about .* GiB here \(weights .* KV cache .*"
                                                      r"but this machine has 0.0 GiB"):
        load(tiny.path, device="cpu")
    load(tiny.path, device="cpu", check_memory=False).close()
