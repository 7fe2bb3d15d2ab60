"""Network behaviour on tiny checkpoints: ChatGLM2/3 against transformers' GLM on the same
weights, cached decoding against full forward passes, ChatGLM-6B's positions and prefix
attention."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from chatglm_reference import load_transformers_glm
from openllm_hub_chatglm.engine_torch import ChatGLMModel
from openllm_hub_chatglm.network.glm1 import RotaryTable2D, position_ids
from openllm_hub_chatglm.spec import GLMSpec

import openllm_hub

PROMPT = "Once upon a time there was a model 你好, and   it told\ta story:\n1."


def _load(folder: Path, **kw: object) -> ChatGLMModel:
    model = openllm_hub.load(folder, device="cpu", **kw)
    assert isinstance(model, ChatGLMModel)
    return model


@pytest.mark.parametrize("fixture", ["v2_dir", "v3_dir"])
def test_logits_equal_transformers_glm(fixture: str, request: pytest.FixtureRequest) -> None:
    """Same weights (keys mapped, fused qkv split) in transformers' GlmForCausalLM.

    Bound: both run float32; logits reach |20|; the two differ only in op order (SDPA vs
    eager attention, fused vs split qkv matmul), ~1e-7 relative. 5e-5 absolute (observed
    5.7e-6) would still catch any real divergence (a wrong rotary pair or group mapping
    moves logits by O(1)).
    """
    folder = request.getfixturevalue(fixture)
    with _load(folder) as model:
        ref = load_transformers_glm(folder, model.spec)
        ids = model.tokenize(PROMPT)
        ours = model.logits(ids)
        with torch.no_grad():
            theirs = ref(torch.tensor([ids])).logits[0].float().numpy()
        assert ours.shape == theirs.shape
        assert np.abs(ours - theirs).max() < 5e-5
        # greedy generation through our KV cache equals transformers' cached greedy decoding
        out = model.generate(PROMPT, max_new_tokens=12, temperature=0.0, repeat_penalty=1.0)
        with torch.no_grad():
            gen = ref.generate(torch.tensor([ids]), max_new_tokens=len(out.token_ids), do_sample=False,
                               eos_token_id=None, pad_token_id=0)
        assert list(out.token_ids) == gen[0, len(ids):].tolist()


def _stepwise_logits(model: ChatGLMModel, ids: list[int], prompt_len: int, chunk: int) -> np.ndarray:
    """Logits from the KV cache: prompt in ``chunk``-sized pieces (v1: one piece), then one id
    at a time, exactly as the engine's step function feeds them."""
    net = model.net
    cache = net.new_cache(model.context_length)
    prompt = ids[:prompt_len]
    rows = []
    pieces = [prompt[i:i + chunk] for i in range(0, prompt_len, chunk)] + [[t] for t in ids[prompt_len:]]
    start = 0
    with torch.no_grad():
        for piece in pieces:
            pos = model._positions(prompt, start, len(piece), max(start + len(piece), prompt_len))
            hidden = net.forward_hidden(torch.tensor(piece), cache, **pos)
            rows.append(net.logits(hidden).numpy())
            start += len(piece)
    return np.concatenate(rows)


@pytest.mark.parametrize("fixture,chunk", [("v1_dir", None), ("v2_dir", 3), ("v3_dir", 5)])
def test_cached_decode_equals_full_forward(fixture: str, chunk: int | None, request: pytest.FixtureRequest) -> None:
    """Every row from the cache (chunked prompt, then single steps) equals the uncached
    forward pass over the whole sequence. float32, same code path but different attention
    shapes and masks: 1e-4 absolute on logits up to |20| (observed ~5e-6)."""
    with _load(request.getfixturevalue(fixture)) as model:
        prompt = model.tokenize(PROMPT)
        generated = list(model.generate(PROMPT, max_new_tokens=10, temperature=0.0, repeat_penalty=1.0).token_ids)
        ids = prompt + generated
        full = model.logits(ids)
        cached = _stepwise_logits(model, ids, len(prompt), chunk or len(prompt))
        assert np.abs(full - cached).max() < 1e-4
        # and greedy decoding from the engine is the argmax chain of those full-pass logits
        assert generated == [int(np.argmax(full[i])) for i in range(len(prompt) - 1, len(ids) - 1)]


def test_v1_position_ids_by_hand() -> None:
    """ChatGLM-6B's 2D position ids, checked against the reference's rules by hand."""
    spec = GLMSpec(variant="chatglm", vocab_size=100, hidden_size=8, num_layers=1, num_heads=1, head_dim=8,
                   num_kv_heads=1, ffn_size=8, eps=1e-5, qkv_bias=True, linear_bias=True, max_length=64,
                   mask_token_id=90, gmask_token_id=91, bos_token_id=94, eos_token_id=95)
    # the tokenizer's layout: text ids, [gMASK], <sop>; then two generated tokens
    pos, block, ctx = position_ids([5, 6, 7, 91, 94], spec, total=7)
    assert ctx == 4
    assert pos == [0, 1, 2, 3, 3, 3, 3]      # from <sop> on: the [gMASK] position
    assert block == [0, 0, 0, 0, 1, 2, 3]    # 0 in the context, then 1, 2, 3
    # [MASK] in the middle (blank infilling): its position is used
    pos, block, ctx = position_ids([5, 90, 7, 94], spec)
    assert (pos, block, ctx) == ([0, 1, 2, 1], [0, 0, 0, 1], 3)
    # [gMASK] wins over [MASK] when both occur (the model's rule)
    assert position_ids([90, 91, 94], spec)[0] == [0, 1, 1]
    # no <sop>: the whole prompt is context; generated tokens repeat the last position
    assert position_ids([5, 6, 91], spec, total=5) == ([0, 1, 2, 2, 2], [0, 0, 0, 1, 2], 3)


def test_v1_prompt_attends_both_ways_v2_does_not(v1_dir: Path, v2_dir: Path) -> None:
    """Changing a later prompt token changes the first token's logits in ChatGLM-6B (prefix
    attention over the prompt) but not in ChatGLM2 (causal)."""
    for folder, bidirectional in ((v1_dir, True), (v2_dir, False)):
        with _load(folder) as model:
            a = model.tokenize("one two three")
            b = model.tokenize("one two four")
            assert a[0] == b[0] and a != b
            diff = np.abs(model.logits(a)[0] - model.logits(b)[0]).max()
            assert (diff > 1e-3) if bidirectional else (diff == 0.0)


def test_v1_rotary_reproduces_reference_float16_table() -> None:
    """In float16 the reference computes positions x inv_freq in float16 (inv_freq itself
    rounded to float16) and cos/sin in float16; our table is bit-identical to that."""
    dim, n = 64, 2048
    ref_inv = (1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))).half()
    t = torch.arange(n, dtype=torch.float16)
    freqs = torch.einsum("i,j->ij", t, ref_inv)
    emb = torch.cat((freqs, freqs), dim=-1)
    table = RotaryTable2D(dim, torch.float16, torch.device("cpu"))
    cos, sin = table.get(torch.arange(n))
    assert torch.equal(cos, emb.cos()) and torch.equal(sin, emb.sin())
    # float32 keeps the rounded inv_freq but multiplies exactly
    cos32, _ = RotaryTable2D(dim, torch.float32, torch.device("cpu")).get(torch.arange(n))
    assert torch.equal(cos32, torch.cat((torch.outer(t.float(), ref_inv.float()),) * 2, dim=-1).cos())


def test_bf16_close_to_fp32(v2_dir: Path) -> None:
    """bfloat16 (8-bit mantissa, ~4e-3 relative per op, two layers) stays within 3% of the
    float32 logit range (observed 0.4%) and agrees on most argmaxes (observed 97%)."""
    with _load(v2_dir) as m32, _load(v2_dir, dtype="bf16") as m16:
        ids = m32.tokenize(PROMPT)
        a, b = m32.logits(ids), m16.logits(ids)
        assert np.abs(a - b).max() < 0.03 * (a.max() - a.min())
        assert np.mean(a.argmax(-1) == b.argmax(-1)) >= 0.8
        assert m16.info.dtype == "bf16"
