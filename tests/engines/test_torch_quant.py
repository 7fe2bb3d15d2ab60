"""The shared weight-only INT8/INT4 format: packing layout, quantization error bounds, exact
dequantization, the layers, and bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from openllm_hub.engines import torch_quant
from openllm_hub.engines.torch_quant import (
    QuantEmbedding,
    QuantLinear,
    dequantize,
    pack_int4,
    qmax,
    quantize_rows,
    resident_bytes,
    unpack_int4,
)
from openllm_hub.errors import ConversionError, CorruptFileError


def _weights(rows: int, cols: int, seed: int) -> torch.Tensor:
    """Gaussian rows with magnitudes from 1e-2 to 1e2 (scales well inside float16's normal
    range), a zero row and a row of exact ties (values at half steps of its scale)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * torch.logspace(-2, 2, rows)[:, None]
    w[0] = 0.0
    w[1] = torch.arange(cols, dtype=torch.float32) % 8 - 3.5  # max 4.5 / ties at k + 0.5
    return w


# ---- packing -------------------------------------------------------------------------------
def test_int4_packing_layout_on_every_nibble_pair() -> None:
    """byte = (q[2j] << 4) | (q[2j+1] & 0xF): the even column in the high nibble."""
    vals = torch.arange(-8, 8, dtype=torch.int8)
    pairs = torch.cartesian_prod(vals, vals).to(torch.int8)  # (256, 2): every (even, odd) pair
    packed = pack_int4(pairs)
    assert packed.shape == (256, 1) and packed.dtype == torch.int8
    expect = [((int(a) & 0xF) << 4) | (int(b) & 0xF) for a, b in pairs.tolist()]
    assert packed.view(torch.uint8).flatten().tolist() == expect
    assert torch.equal(unpack_int4(packed), pairs)
    assert pack_int4(torch.tensor([[1, -2, 7, -8]], dtype=torch.int8)).view(torch.uint8).tolist() == [[0x1E, 0x78]]


def test_int4_unpack_is_a_bijection_on_bytes() -> None:
    """Every byte unpacks to two values in [-8, 7] and packs back to itself; leading
    dimensions are kept."""
    every = torch.arange(-128, 128, dtype=torch.int16).to(torch.int8).reshape(2, 4, 32)
    q = unpack_int4(every)
    assert q.shape == (2, 4, 64) and q.dtype == torch.int8
    assert int(q.min()) == -8 and int(q.max()) == 7
    assert torch.equal(pack_int4(q), every)


# ---- quantization ----------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [8, 4])
def test_quantization_error_is_at_most_half_a_step(bits: int) -> None:
    """Round to nearest against the stored float16 scale: |w - q * scale| <= scale / 2 per
    value, plus the float32 rounding of w / scale (below qmax * 2**-24 <= 2**-17 steps).
    Checked in float64, where q * scale and the difference are exact."""
    w = _weights(48, 64, seed=1)
    q, scale = quantize_rows(w, bits)
    assert q.dtype == torch.int8 and scale.dtype == torch.float16
    assert q.shape == ((48, 32) if bits == 4 else (48, 64)) and scale.shape == (48,)
    back = dequantize(q, scale, bits, torch.float64)
    step = scale.double()[:, None]
    err = (back - w.double()).abs()
    assert torch.all(err <= step * (0.5 + 2.0 ** -17))
    # the bound is nearly reached (it is not vacuous), and nothing is off by a whole step
    assert float((err[2:] / step[2:]).max()) > 0.45
    # the clamp never binds: each row's largest value lands exactly on +-qmax
    full = unpack_int4(q) if bits == 4 else q
    assert torch.equal(full[1:].abs().amax(dim=1), torch.full((47,), qmax(bits), dtype=torch.int8))
    # a zero row has scale 0 and stays 0 (no division by zero)
    assert float(scale[0]) == 0.0 and torch.all(back[0] == 0)


def test_quantization_scale_and_rounding_by_hand() -> None:
    """scale = max|w| / qmax in float16; q = round-half-to-even(w / scale)."""
    w = torch.tensor([[7.0, -3.5, 2.5, 0.4], [0.0, 0.0, 0.0, 0.0]])
    q, scale = quantize_rows(w, 4)
    assert scale.tolist() == [1.0, 0.0]
    assert unpack_int4(q).tolist() == [[7, -4, 2, 0], [0, 0, 0, 0]]  # -3.5 -> -4, 2.5 -> 2 (to even)
    q8, s8 = quantize_rows(torch.tensor([[127.0, -63.5, 1.0]]), 8)
    assert s8.tolist() == [1.0] and q8.tolist() == [[127, -64, 1]]
    _, s32 = quantize_rows(w, 8, scale_dtype=torch.float32)
    assert s32.dtype == torch.float32 and s32.tolist() == [pytest.approx(7.0 / 127, rel=1e-7), 0.0]


def test_tiny_rows_quantize_to_zero() -> None:
    """Documented limit: a row whose scale underflows float16 quantizes to 0."""
    q, scale = quantize_rows(torch.full((1, 4), 1e-9), 8)
    assert float(scale[0]) == 0.0 and torch.all(q == 0)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dequantize_rounds_once_in_the_compute_dtype(bits: int, dtype: torch.dtype) -> None:
    """q (exact in any float dtype) times the scale converted to the dtype; also for a block
    of rows and for looked-up rows of any leading shape."""
    w = _weights(16, 32, seed=2)
    q, scale = quantize_rows(w, bits)
    full = (unpack_int4(q) if bits == 4 else q).to(dtype)
    want = full * scale.to(dtype)[:, None]
    got = dequantize(q, scale, bits, dtype)
    assert got.dtype == dtype and torch.equal(got, want)
    assert torch.equal(dequantize(q[4:9], scale[4:9], bits, dtype), want[4:9])
    ids = torch.tensor([[3, 3], [0, 15]])
    assert torch.equal(dequantize(q[ids], scale[ids], bits, dtype), want[ids])


def test_bad_input_is_reported() -> None:
    with pytest.raises(ConversionError, match="odd"):
        quantize_rows(torch.randn(4, 5), 4)
    quantize_rows(torch.randn(4, 5), 8)  # INT8 has no such constraint
    with pytest.raises(ConversionError, match="bit width 3"):
        quantize_rows(torch.randn(4, 4), 3)
    with pytest.raises(ConversionError, match="2-D"):
        quantize_rows(torch.randn(2, 4, 4), 8)
    with pytest.raises(ConversionError, match="even number of columns"):
        pack_int4(torch.zeros(2, 3, dtype=torch.int8))


# ---- layers ----------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [8, 4])
def test_quant_linear_computes_with_the_dequantized_weight(bits: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whole-weight, block-by-block and (INT8, float32) torch's int8 kernel agree with
    F.linear over the dequantized weight (1e-5: float32 products in another order)."""
    w = _weights(40, 64, seed=3) * 0.01
    lin = QuantLinear(64, 40, bits, bias=True)
    lin.set_float(w)
    lin.bias = torch.nn.Parameter(torch.linspace(-1, 1, 40), requires_grad=False)
    x = torch.randn(3, 5, 64, generator=torch.Generator().manual_seed(4))
    want = F.linear(x.double(), dequantize(lin.weight, lin.weight_scale, bits, torch.float64), lin.bias.double())
    for dtype in (torch.float32, torch.float64):  # float64 never takes torch's int8 kernel
        got = lin(x.to(dtype))
        assert got.dtype == dtype and got.shape == (3, 5, 40)
        assert float((got.double() - want).abs().max()) < 1e-5
    monkeypatch.setattr(torch_quant, "BLOCK_ELEMENTS", 64 * 7)  # 7 rows per block: 6 blocks, the last short
    blocked = lin(x.double())
    assert float((blocked - want).abs().max()) < 1e-9


def test_quant_linear_int4_cpu_kernel_keeps_the_values() -> None:
    """torch's CPU int4 kernel (bfloat16) computes the same INT4 weight: within 1% of the
    output range of the float64 product (bfloat16 activations and scales)."""
    lin = QuantLinear(64, 32, 4, bias=False)
    lin.set_float(_weights(34, 64, seed=5)[2:])  # 32 Gaussian rows of growing magnitude
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(6))
    want = F.linear(x.double(), dequantize(lin.weight, lin.weight_scale, 4, torch.float64))
    if not lin.use_cpu_int4_kernel():
        pytest.fail("torch's CPU int4 kernel is expected with torch 2.x on a CPU")
    assert lin.cpu_group == 64 and not lin.use_cpu_int4_kernel()  # repacked once
    got = lin(x.to(torch.bfloat16)).double()
    assert float((got - want).abs().max()) <= 0.01 * float(want.max() - want.min())


def test_quant_linear_rejects_mismatched_weights() -> None:
    lin = QuantLinear(8, 4, 4, bias=False)
    with pytest.raises(CorruptFileError, match="expected"):
        lin.set_quantized(torch.zeros(4, 8, dtype=torch.int8), torch.zeros(4, dtype=torch.float16))  # unpacked
    with pytest.raises(CorruptFileError, match="weight_scale"):
        lin.set_quantized(torch.zeros(4, 4, dtype=torch.int8), torch.zeros(5, dtype=torch.float16))
    with pytest.raises(CorruptFileError, match="expected"):
        lin.set_float(torch.zeros(8, 4))
    with pytest.raises(CorruptFileError, match="even input dimension"):
        QuantLinear(7, 4, 4, bias=False)
    with pytest.raises(ConversionError, match="bit width"):
        QuantLinear(8, 4, 2, bias=False)


@pytest.mark.parametrize("bits", [8, 4])
def test_quant_embedding_looks_up_dequantized_rows(bits: int) -> None:
    table = _weights(10, 16, seed=7)
    emb = QuantEmbedding(10, 16, bits)
    emb.inner.set_float(table)
    full = dequantize(emb.inner.weight, emb.inner.weight_scale, bits, torch.float32)
    ids = torch.tensor([[9, 0, 3], [3, 3, 1]])
    out = emb(ids, torch.float32)
    assert out.shape == (2, 3, 16) and torch.equal(out, full[ids])


def test_resident_bytes_counts_shared_tensors_once() -> None:
    lin = QuantLinear(64, 32, 4, bias=True, bias_dtype=torch.float16)
    assert resident_bytes(lin) == 32 * 32 + 32 * 2 + 32 * 2  # int4 weight, fp16 scales, fp16 bias
    a, b = torch.nn.Linear(4, 4, bias=False), torch.nn.Linear(4, 4, bias=False)
    b.weight = a.weight  # tied
    assert resident_bytes(torch.nn.Sequential(a, b)) == 16 * 4
