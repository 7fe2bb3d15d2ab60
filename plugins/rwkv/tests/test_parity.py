"""Logits through openllm_hub equal the rwkv package called directly, version by version.

Both sides run the same package code on the same file with the same strategy and the same
chunking, so equality is exact (``np.array_equal``), not approximate.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from openllm_hub_rwkv.tiny import build_state_dict

import openllm_hub

VERSIONS = ("4", "5.2", "6", "7")


def _ids(model: Any) -> list[int]:
    return model.tokenize("The RWKV state is the context. 你好，世界！ 🎉 12345")


@pytest.mark.parametrize("version", VERSIONS)
def test_logits_equal_package(version: str, ckpt: dict[str, Path], shared_model: Callable[..., Any],
                              pkg: Any) -> None:
    model = shared_model(version)
    assert model.info.extra["strategy"] == "cpu fp32"
    assert model.info.extra["rwkv_version"] == version
    ids = _ids(model)
    ref = pkg.logits(pkg.model(ckpt[version], version), ids)
    ours = model.logits(ids)
    assert ours.shape == (len(ids), model.info.vocab_size)
    assert np.array_equal(ours, ref)
    assert float(ours.std()) > 0.5  # a real spread of logits, not a degenerate model


@pytest.mark.parametrize("version", ("5.2", "7"))
def test_long_prompt_read_in_chunks(version: str, ckpt: dict[str, Path], shared_model: Callable[..., Any],
                                    pkg: Any) -> None:
    """chunk_len=8 over a 40+ token prompt: the same chunked calls as the package, exactly."""
    model = shared_model(version, chunk_len=8)
    ids = model.tokenize("Long prompts are fed to the RNN in chunks, as ChatRWKV does with CHUNK_LEN. " * 2)
    assert len(ids) > 24
    ref_model = pkg.model(ckpt[version], version)
    assert np.array_equal(model.logits(ids), pkg.logits(ref_model, ids, chunk=8))
    # the first generated token comes from the chunked prompt read: greedy = argmax of the last row
    last = pkg.logits(ref_model, ids, chunk=8)[-1]
    out = model.generate(model.detokenize(ids), max_new_tokens=1, temperature=0.0, repeat_penalty=1.0)
    assert out.token_ids[0] == int(np.argmax(last))


@pytest.mark.parametrize("version", ("4", "6"))
def test_bf16_and_int8_strategies(version: str, ckpt: dict[str, Path], shared_model: Callable[..., Any],
                                  pkg: Any) -> None:
    ids = _ids(shared_model(version))
    fp32 = shared_model(version).logits(ids)
    scale = float(fp32.max() - fp32.min())
    bf16 = shared_model(version, dtype="bf16")
    assert bf16.info.extra["strategy"] == "cpu bf16"
    assert np.array_equal(bf16.logits(ids), pkg.logits(pkg.model(ckpt[version], version, "cpu bf16"), ids))
    i8 = shared_model(version, int8=True)
    assert i8.info.extra["strategy"] == "cpu fp32i8" and i8.info.quantization == "int8"
    q = i8.logits(ids)
    assert np.array_equal(q, pkg.logits(pkg.model(ckpt[version], version, "cpu fp32i8"), ids))
    # int8: each weight is rounded to 1 of 256 levels of its row/column range; measured
    # max |diff| is 0.4-0.8 % of the logit range on these models; 2 % is the bound.
    assert float(np.abs(q - fp32).max()) <= 0.02 * scale
    assert float(np.abs(q - fp32).max()) > 0.0  # it really is quantized


def test_raw_strategy_option(ckpt: dict[str, Path], shared_model: Callable[..., Any], pkg: Any) -> None:
    """An expert's split strategy reaches the package as written (layer plan and logits)."""
    m = shared_model("5.2", strategy="cpu fp32 *1 -> cpu bf16")
    assert m.info.extra["strategy"] == "cpu fp32 *1 -> cpu bf16"
    assert m.info.extra["strategy_reason"] == "raw strategy option"
    ref = pkg.model(ckpt["5.2"], "5.2", "cpu fp32 *1 -> cpu bf16")
    plan = [(s.atype, s.wtype) for s in ref.strategy]
    assert plan == [(torch.float32, torch.float32)] + [(torch.bfloat16, torch.bfloat16)] * 2
    ids = _ids(m)
    assert np.array_equal(m.logits(ids), pkg.logits(ref, ids))


def test_v7_and_v4_in_one_process(ckpt: dict[str, Path], pkg: Any) -> None:
    """RWKV-7 needs RWKV_V7_ON at import, which hides the RWKV-4/5/6 class: loading both kinds
    in any order works, and rwkv.model itself stays the default (RWKV-4/5/6) module."""
    import rwkv.model

    with openllm_hub.load(ckpt["7"], device="cpu") as a, openllm_hub.load(ckpt["4"], device="cpu") as b, \
            openllm_hub.load(ckpt["7"], device="cpu", dtype="bf16") as c:
        ids_a, ids_b = _ids(a), _ids(b)
        assert np.array_equal(a.logits(ids_a), pkg.logits(pkg.model(ckpt["7"], "7"), ids_a))
        assert np.array_equal(b.logits(ids_b), pkg.logits(pkg.model(ckpt["4"], "4"), ids_b))
        assert c.info.extra["strategy"] == "cpu bf16"
        assert np.array_equal(a.logits(ids_a), pkg.logits(pkg.model(ckpt["7"], "7"), ids_a))  # a unaffected by c
    assert rwkv.model.RWKV.__name__ == "RWKV" and "RWKV_V7_ON" not in __import__("os").environ


def test_one_layer_v52_key_order(tmp_path: Path, pkg: Any) -> None:
    """In the trainer's key order a one-layer RWKV-5.2 file fools the package (it meets
    time_decay before ln_x/gate, takes it for 5.1 and finds no head count). The SDK loads it as
    5.2 and gives the logits the package gives on the same tensors in a readable order."""
    from rwkv.model import RWKV

    sd = build_state_dict("5.2", n_layer=1, seed=3)
    path = tmp_path / "one-layer.pth"
    torch.save(sd, path)
    fooled = RWKV(str(path)[:-4], "cpu fp32", verbose=False)
    assert fooled.version == 5.1
    with pytest.raises(AttributeError):  # no head count: the package cannot even build a state
        fooled.forward([1, 2], None)
    reordered = tmp_path / "reordered.pth"
    markers = [k for k in sd if "ln_x" in k or "gate.weight" in k]
    torch.save({k: sd[k] for k in markers + [k for k in sd if k not in markers]}, reordered)
    with openllm_hub.load(path, device="cpu") as m:
        assert m.info.extra["rwkv_version"] == "5.2"
        ids = _ids(m)
        assert np.array_equal(m.logits(ids), pkg.logits(pkg.model(reordered, "5.2"), ids))


def test_file_names_the_package_cannot_open(ckpt: dict[str, Path], tmp_path: Path, pkg: Any) -> None:
    """The package appends '.pth' (RWKV-7: always) and strips spaces from the name; other names
    load through a private symlink."""
    odd = tmp_path / "my model .bin"
    odd.symlink_to(ckpt["7"])
    plain = tmp_path / "weights"
    plain.write_bytes(ckpt["5.2"].read_bytes())
    for path, version in ((odd, "7"), (plain, "5.2")):
        with openllm_hub.load(path, device="cpu") as m:
            ids = _ids(m)
            assert np.array_equal(m.logits(ids), pkg.logits(pkg.model(ckpt[version], version), ids))


def test_jit_off(ckpt: dict[str, Path], shared_model: Callable[..., Any]) -> None:
    """jit=False imports the package with RWKV_JIT_ON=0 (plain torch modules): the same math,
    so the logits agree with the TorchScript build to fp32 rounding (measured max |diff| ~1e-6;
    bound 1e-5), and the process keeps serving JIT models."""
    with openllm_hub.load(ckpt["4"], device="cpu", jit=False) as m:
        assert m.info.extra["jit"] is False
        ids = _ids(m)
        assert float(np.abs(m.logits(ids) - shared_model("4").logits(ids)).max()) <= 1e-5
