"""Our networks against golden outputs of the original ChatGLM-6B and ChatGLM2-6B code.

The golden files (tests/data, from li-plus/chatglm.cpp, MIT; see tests/data/README.md) hold
the weights of a 1-layer model and the hidden states the official ``modeling_chatglm.py``
produced for a 3-token prompt and two cached steps. We write those weights as an HF-layout
checkpoint under the official key names, load it through our checkpoint reader, and compare.

Tolerance: both sides run in float32 on O(1) values (weights in U(-0.5, 0.5), outputs after
a layer norm); differing op order (SDPA vs the reference's baddbmm/softmax) gives ~1e-7
differences. We accept 2e-6 absolute (observed max 1.8e-7).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from openllm_hub_chatglm.checkpoint import iter_tensors
from openllm_hub_chatglm.network import QuantPlan, build_network
from openllm_hub_chatglm.network.glm1 import position_ids
from openllm_hub_chatglm.spec import read_spec
from openllm_hub_chatglm.tiny import write_weights

DATA = Path(__file__).parent / "data"
TOL = 2e-6
H = 32

V1_LAYOUT = [
    ("transformer.word_embeddings.weight", (5, H)),
    ("transformer.layers.0.input_layernorm.weight", (H,)), ("transformer.layers.0.input_layernorm.bias", (H,)),
    ("transformer.layers.0.attention.query_key_value.weight", (3 * H, H)),
    ("transformer.layers.0.attention.query_key_value.bias", (3 * H,)),
    ("transformer.layers.0.attention.dense.weight", (H, H)), ("transformer.layers.0.attention.dense.bias", (H,)),
    ("transformer.layers.0.post_attention_layernorm.weight", (H,)),
    ("transformer.layers.0.post_attention_layernorm.bias", (H,)),
    ("transformer.layers.0.mlp.dense_h_to_4h.weight", (128, H)),
    ("transformer.layers.0.mlp.dense_h_to_4h.bias", (128,)),
    ("transformer.layers.0.mlp.dense_4h_to_h.weight", (H, 128)), ("transformer.layers.0.mlp.dense_4h_to_h.bias", (H,)),
    ("transformer.final_layernorm.weight", (H,)), ("transformer.final_layernorm.bias", (H,)),
]
P2 = "transformer.encoder.layers.0."
V2_LAYOUT = [
    ("transformer.embedding.word_embeddings.weight", (5, H)), (P2 + "input_layernorm.weight", (H,)),
    (P2 + "self_attention.query_key_value.weight", (48, H)), (P2 + "self_attention.query_key_value.bias", (48,)),
    (P2 + "self_attention.dense.weight", (H, H)), (P2 + "post_attention_layernorm.weight", (H,)),
    (P2 + "mlp.dense_h_to_4h.weight", (96, H)), (P2 + "mlp.dense_4h_to_h.weight", (H, 48)),
    ("transformer.encoder.final_layernorm.weight", (H,)),
]
# The golden prompt [0, 1, 2] used token 1 as [gMASK] and token 2 as <sop> (position ids
# [[0, 1, 1], [0, 0, 1]], context length 2); the config says so, as a real one would.
V1_CONFIG = {"model_type": "chatglm", "architectures": ["ChatGLMModel"], "hidden_size": H, "num_attention_heads": 8,
             "num_layers": 1, "vocab_size": 5, "inner_hidden_size": 128, "position_encoding_2d": True,
             "layernorm_epsilon": 1e-5, "max_sequence_length": 8, "mask_token_id": 4000, "gmask_token_id": 1,
             "bos_token_id": 2, "eos_token_id": 4001}
V2_CONFIG = {"model_type": "chatglm", "_name_or_path": "THUDM/chatglm2-6b", "hidden_size": H,
             "num_attention_heads": 8, "num_layers": 1, "padded_vocab_size": 5, "ffn_hidden_size": 48,
             "kv_channels": 4, "multi_query_attention": True, "multi_query_group_num": 2, "add_qkv_bias": True,
             "add_bias_linear": False, "rmsnorm": True, "post_layer_norm": True, "layernorm_epsilon": 1e-5,
             "seq_length": 8}


def read_golden(name: str, layout: list[tuple[str, tuple[int, ...]]]
                ) -> tuple[dict[str, torch.Tensor], list[tuple[list[int], np.ndarray]]]:
    buf = (DATA / name).read_bytes()
    off = 0

    def take(n: int, dtype: type) -> np.ndarray:
        nonlocal off
        a = np.frombuffer(buf, dtype=dtype, count=n, offset=off)
        off += a.nbytes
        return a

    weights = {k: torch.from_numpy(take(int(np.prod(s)), np.float32).copy()).reshape(s) for k, s in layout}
    steps = []
    for n in (3, 1, 1):
        ids = take(n, np.int32).tolist()
        steps.append((ids, take(n * H, np.float32).reshape(n, H)))
    assert off == len(buf), "golden file layout misread"
    return weights, steps


def load_golden_network(tmp_path: Path, name: str, layout: list[tuple[str, tuple[int, ...]]], cfg: dict[str, object],
                        output_key: str) -> tuple[object, object, list[tuple[list[int], np.ndarray]]]:
    weights, steps = read_golden(name, layout)
    weights[output_key] = torch.zeros(5, H)  # the golden data stops before the output layer
    (tmp_path / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    write_weights(tmp_path, weights, shards=2)
    spec = read_spec(tmp_path, cfg)
    net = build_network(spec, torch.float32, QuantPlan(), torch.device("cpu"))
    net.load_tensors(iter_tensors(tmp_path))
    return spec, net, steps


def test_chatglm6b_matches_original_golden(tmp_path: Path) -> None:
    spec, net, steps = load_golden_network(tmp_path, "glm_model.data", V1_LAYOUT, V1_CONFIG, "lm_head.weight")
    prompt = steps[0][0]
    pos, block, ctx = position_ids(prompt, spec, total=5)  # type: ignore[arg-type]
    # the reference's ids for this run (see the README): prompt, then two generated tokens
    assert (pos, block, ctx) == ([0, 1, 1, 1, 1], [0, 0, 1, 2, 3], 2)
    cache = net.new_cache(8)  # type: ignore[attr-defined]
    start = 0
    with torch.no_grad():
        for ids, want in steps:
            n = len(ids)
            got = net.forward_hidden(  # type: ignore[attr-defined]
                torch.tensor(ids), cache, position_ids=torch.tensor(pos[start:start + n]),
                block_position_ids=torch.tensor(block[start:start + n]), context_length=ctx)
            start += n
            np.testing.assert_allclose(got.numpy(), want, atol=TOL, rtol=0)
        # one uncached pass over all five ids reproduces every step too
        full = net.forward_hidden(torch.tensor([0, 1, 2, 3, 4]), None,  # type: ignore[attr-defined]
                                  position_ids=torch.tensor(pos), block_position_ids=torch.tensor(block),
                                  context_length=ctx)
    np.testing.assert_allclose(full.numpy(), np.concatenate([w for _, w in steps]), atol=TOL, rtol=0)


@pytest.mark.parametrize("variant", ["chatglm2", "chatglm3"])
def test_chatglm2_and_3_match_original_golden(tmp_path: Path, variant: str) -> None:
    cfg = {**V2_CONFIG, "_name_or_path": f"THUDM/{variant}-6b"}
    spec, net, steps = load_golden_network(tmp_path, "glm2_model.data", V2_LAYOUT, cfg,
                                           "transformer.output_layer.weight")
    assert spec.variant == variant  # type: ignore[attr-defined]
    cache = net.new_cache(8)  # type: ignore[attr-defined]
    with torch.no_grad():
        for ids, want in steps:
            got = net.forward_hidden(torch.tensor(ids), cache)  # type: ignore[attr-defined]
            np.testing.assert_allclose(got.numpy(), want, atol=TOL, rtol=0)


def test_golden_check_can_fail(tmp_path: Path) -> None:
    """The comparison is sensitive: v1's residual scale taken as sqrt(2 * num_layers) (the
    config's 1 layer instead of the reference's effective 28) is far off the golden data."""
    from openllm_hub_chatglm.network import glm1

    _, net, steps = load_golden_network(tmp_path, "glm_model.data", V1_LAYOUT, V1_CONFIG, "lm_head.weight")
    for layer in net.transformer.layers:  # type: ignore[attr-defined]
        assert isinstance(layer, glm1.GLMBlock)
        layer.alpha = 2 ** 0.5
    ids, want = steps[0]
    with torch.no_grad():
        got = net.forward_hidden(torch.tensor(ids), None, position_ids=torch.tensor([0, 1, 1]),  # type: ignore[attr-defined]
                                 block_position_ids=torch.tensor([0, 0, 1]), context_length=2)
    assert np.abs(got.numpy() - want).max() > 0.1
