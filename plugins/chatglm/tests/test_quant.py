"""INT8/INT4 weight-only quantization: packing layout, error bounds, quantize at load vs on
disk, official pre-quantized checkpoints, and resident memory."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from openllm_hub_chatglm.checkpoint import iter_tensors
from openllm_hub_chatglm.engine_torch import ChatGLMModel
from openllm_hub_chatglm.network import QuantPlan, build_network
from openllm_hub_chatglm.quantize import LAYER_LINEAR
from openllm_hub_chatglm.spec import read_spec
from openllm_hub_chatglm.tiny import write_weights

import openllm_hub
from openllm_hub.engines.torch_quant import dequantize, pack_int4, quantize_rows, resident_bytes, unpack_int4
from openllm_hub.errors import ConversionError, CorruptFileError, InvalidParameterError

PROMPT = "Once upon a time there was a model 你好, and it told a story:\n1."


def _load(folder: Path, **kw: object) -> ChatGLMModel:
    m = openllm_hub.load(folder, device="cpu", **kw)
    assert isinstance(m, ChatGLMModel)
    return m


# ---- packing -------------------------------------------------------------------------------
def test_int4_packing_is_the_official_layout() -> None:
    """byte = (q[2j] << 4) | (q[2j+1] & 0xF), as the official compress_int4_weight kernel."""
    q = torch.tensor([[1, -2, 7, -8], [0, -1, -8, 7]], dtype=torch.int8)
    assert pack_int4(q).view(torch.uint8).tolist() == [[0x1E, 0x78], [0x0F, 0x87]]
    rng = np.random.default_rng(0)
    big = rng.integers(-8, 8, size=(37, 64), dtype=np.int8)
    u = big.astype(np.uint8)
    official = (((u[:, 0::2] << 4) & 0xF0) | (u[:, 1::2] & 0x0F)).astype(np.uint8)
    packed = pack_int4(torch.from_numpy(big))
    assert np.array_equal(packed.view(torch.uint8).numpy(), official)
    assert torch.equal(unpack_int4(packed), torch.from_numpy(big))  # round trip


@pytest.mark.parametrize("bits", [8, 4])
def test_quantization_error_is_half_a_step(bits: int) -> None:
    w = torch.randn(64, 48, generator=torch.Generator().manual_seed(1)) * 0.3
    w[3] = 0.0  # an all-zero row must not divide by zero
    q, scale = quantize_rows(w, bits)
    assert q.dtype == torch.int8 and scale.dtype == torch.float16
    assert q.shape == ((64, 24) if bits == 4 else (64, 48))
    back = dequantize(q, scale, bits, torch.float32)
    step = scale.float()[:, None]
    # round-to-nearest against the stored (float16) scale: at most half a step per value
    assert torch.all((back - w).abs() <= step / 2 + 1e-6)
    assert torch.all(back[3] == 0)
    with pytest.raises(ConversionError, match="odd"):
        quantize_rows(torch.randn(4, 5), 4)


# ---- accuracy -------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["chatglm", "chatglm2"])
def test_quantized_logits_close_to_fp32(variant: str, make_ckpt: Callable[..., Path]) -> None:
    """Bounds on a random model (Gaussian weights are a bad case for INT4: its step,
    max|w|/7, is ~0.4 sigma). INT8: max |diff| <= 3% of the fp32 logit range (observed
    0.5-1%), argmax agreement >= 95%. INT4: max |diff| <= 35% of the range (observed 10-20%),
    logits still correlated >= 0.9 with fp32 (observed 0.93-0.98); both with embeddings and
    output layer quantized too (the default)."""
    folder = make_ckpt(variant, hidden=128, seed=5)
    with _load(folder) as ref:
        ids = ref.tokenize(PROMPT)
        a = ref.logits(ids)
    span = a.max() - a.min()
    for q, bound in (("int8", 0.03), ("int4", 0.35)):
        with _load(folder, quantize=q) as m:
            assert m.info.quantization == q
            b = m.logits(ids)
        assert np.abs(a - b).max() <= bound * span, q
        if q == "int8":
            assert np.mean(a.argmax(-1) == b.argmax(-1)) >= 0.95
        else:
            assert np.corrcoef(a.ravel(), b.ravel())[0, 1] >= 0.9


def test_int4_cpu_kernel_with_bf16(make_ckpt: Callable[..., Path]) -> None:
    """With bfloat16 activations the INT4 layers move to torch's CPU int4 kernel (its own
    packing, bf16 scales). It computes the same INT4 model: within 2% of the logit range of
    the float32 dequantizing path (bf16 activations and scales; observed 0.6%), and stays
    under 0.3x of the 16-bit weights."""
    folder = make_ckpt("chatglm2", hidden=128, seed=5)
    with _load(folder, quantize="int4") as exact, _load(folder, quantize="int4", dtype="bf16") as fast, \
            _load(folder, dtype="bf16") as m16:
        assert exact.info.extra["cpu_int4_kernel_layers"] == 0
        assert fast.info.extra["cpu_int4_kernel_layers"] == 2 * 4 + 1  # 4 linears per layer + output
        ids = exact.tokenize(PROMPT)
        a, b = exact.logits(ids), fast.logits(ids)
        assert np.abs(a - b).max() <= 0.02 * (a.max() - a.min())
        assert fast.weight_bytes() <= 0.3 * m16.weight_bytes()


# ---- on disk -------------------------------------------------------------------------------
def test_quantize_to_disk_official_layout_and_reload(v2_dir: Path, tmp_path: Path) -> None:
    out = openllm_hub.quantize(v2_dir, tmp_path / "int4", "int4", progress=False)
    cfg = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert cfg["quantization_bit"] == 4
    assert (out / "tokenizer.model").read_bytes() == (v2_dir / "tokenizer.model").read_bytes()
    src = dict(iter_tensors(v2_dir))
    saved = dict(iter_tensors(out))
    for name, tensor in src.items():
        if LAYER_LINEAR.match(name):
            rows, cols = tensor.shape
            assert saved[name].dtype == torch.int8 and tuple(saved[name].shape) == (rows, cols // 2)
            scale = saved[name[: -len("weight")] + "weight_scale"]
            assert scale.dtype == torch.float16 and tuple(scale.shape) == (rows,)
        else:
            assert torch.equal(saved[name], tensor)
    # reloading equals quantizing at load (same values, same kernels)
    with _load(out) as disk, _load(v2_dir, quantize="int4") as live:
        ids = disk.tokenize(PROMPT)
        assert disk.info.quantization == "int4" and disk.info.extra["checkpoint_quantization_bit"] == 4
        np.testing.assert_array_equal(disk.logits(ids), live.logits(ids))
    with pytest.raises(ConversionError, match="already INT4"):
        openllm_hub.quantize(out, tmp_path / "again", "int8", progress=False)
    with pytest.raises(InvalidParameterError, match="already INT4"):
        _load(out, quantize="int8")


def _official_quantize(w: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """The official QuantizedLinear + compress_int4_weight, written out with numpy."""
    scale = (np.abs(w).max(axis=1) / (2 ** (bits - 1) - 1)).astype(np.float16)
    q = np.round(w / scale.astype(np.float32)[:, None]).astype(np.int8)
    if bits == 4:
        u = q.astype(np.uint8)
        q = (((u[:, 0::2] << 4) & 0xF0) | (u[:, 1::2] & 0x0F)).astype(np.uint8).view(np.int8)
    return q, scale


@pytest.mark.parametrize("variant,bits", [("chatglm", 8), ("chatglm2", 4), ("chatglm3", 4)])
def test_official_prequantized_checkpoint_loads(variant: str, bits: int, make_ckpt: Callable[..., Path],
                                                tmp_path: Path) -> None:
    """A checkpoint in THUDM's int4/int8 layout (quantization_bit in config.json, int8
    ``weight`` + float16 ``weight_scale`` per layer linear, sharded .bin) loads and computes
    exactly what a float model with the dequantized weights computes (1e-5: same float32
    products, only the layer dispatch differs)."""
    src = make_ckpt(variant, seed=7)
    quant, dense = tmp_path / "quant", tmp_path / "dense"
    for folder in (quant, dense):
        shutil.copytree(src, folder, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "*.index.json"))
    q_sd, f_sd = {}, {}
    for name, tensor in iter_tensors(src):
        if LAYER_LINEAR.match(name):
            q, scale = _official_quantize(tensor.numpy(), bits)
            q_sd[name], q_sd[name[:-6] + "weight_scale"] = torch.from_numpy(q), torch.from_numpy(scale)
            full = q
            if bits == 4:  # unpack by hand: high nibble first, each sign-extended
                u = q.view(np.uint8)
                hi, lo = (u >> 4).astype(np.int8), (u & 0xF).astype(np.int8)
                full = np.stack([np.where(hi > 7, hi - 16, hi), np.where(lo > 7, lo - 16, lo)], -1).reshape(
                    q.shape[0], -1)
            f_sd[name] = torch.from_numpy(full.astype(np.float32) * scale.astype(np.float32)[:, None])
        else:
            q_sd[name] = f_sd[name] = tensor.half() if tensor.is_floating_point() else tensor
    cfg = json.loads((src / "config.json").read_text(encoding="utf-8"))
    (quant / "config.json").write_text(json.dumps({**cfg, "quantization_bit": bits}), encoding="utf-8")
    write_weights(quant, q_sd, fmt="bin", shards=3)
    write_weights(dense, f_sd)
    with _load(quant, quantize_embeddings=False) as mq, _load(dense) as mf:
        assert mq.info.quantization == f"int{bits}"
        ids = mq.tokenize(PROMPT)
        assert np.abs(mq.logits(ids) - mf.logits(ids)).max() < 1e-5
        assert mq.generate(PROMPT, max_new_tokens=6, temperature=0.0).token_ids == \
            mf.generate(PROMPT, max_new_tokens=6, temperature=0.0).token_ids


# ---- memory ----------------------------------------------------------------------------------
def test_resident_weight_memory(make_ckpt: Callable[..., Path]) -> None:
    """Parameter + buffer bytes against the same model in 16-bit (bfloat16: the bytes of
    float16, which the CPU does not compute in): INT8 <= 0.55x, INT4 <= 0.3x."""
    folder = make_ckpt("chatglm2", hidden=128, seed=5)
    with _load(folder, dtype="bf16") as m16:
        base = m16.weight_bytes()
    for q, bound in (("int8", 0.55), ("int4", 0.30)):
        with _load(folder, quantize=q) as m:
            assert m.weight_bytes() <= bound * base, (q, m.weight_bytes() / base)


# The released configs' shapes (config.json of THUDM/chatglm-6b and chatglm2-6b), built on the
# meta device: exact byte counts without allocating 12 GB.
REAL = {
    "chatglm": {"model_type": "chatglm", "hidden_size": 4096, "inner_hidden_size": 16384, "num_attention_heads": 32,
                "num_layers": 28, "vocab_size": 130528, "position_encoding_2d": True, "max_sequence_length": 2048,
                "bos_token_id": 130004, "eos_token_id": 130005, "mask_token_id": 130000, "gmask_token_id": 130001},
    "chatglm2": {"model_type": "chatglm", "_name_or_path": "THUDM/chatglm2-6b", "hidden_size": 4096,
                 "ffn_hidden_size": 13696, "kv_channels": 128, "multi_query_attention": True,
                 "multi_query_group_num": 2, "num_attention_heads": 32, "num_layers": 28, "padded_vocab_size": 65024,
                 "add_qkv_bias": True, "add_bias_linear": False, "seq_length": 32768},
}


@pytest.mark.parametrize("variant", ["chatglm", "chatglm2"])
def test_real_size_memory_ratios(variant: str) -> None:
    spec = read_spec(Path("."), REAL[variant])
    meta = torch.device("meta")
    fp16 = resident_bytes(build_network(spec, torch.float16, QuantPlan(), meta))
    assert fp16 == 2 * spec.parameter_count()
    for bits, bound in ((8, 0.55), (4, 0.30)):
        quant = resident_bytes(build_network(spec, torch.float16, QuantPlan(bits, embeddings=True), meta))
        assert quant <= bound * fp16


# ---- bad input ---------------------------------------------------------------------------
def test_int4_with_odd_input_dimension(make_ckpt: Callable[..., Path], tmp_path: Path) -> None:
    folder = make_ckpt("chatglm2", seed=9, ffn=33)  # dense_4h_to_h has 33 inputs
    with pytest.raises(InvalidParameterError, match="odd input dimension"):
        _load(folder, quantize="int4")
    with _load(folder, quantize="int8") as m:  # int8 has no such constraint
        assert m.generate("hi", max_new_tokens=2, temperature=0.0).usage.completion_tokens <= 2
    # an "INT4 checkpoint" whose config has an odd input dimension cannot be right
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    cfg = json.loads((bad / "config.json").read_text(encoding="utf-8"))
    (bad / "config.json").write_text(json.dumps({**cfg, "quantization_bit": 4}), encoding="utf-8")
    with pytest.raises(CorruptFileError, match="odd"):
        _load(bad)
