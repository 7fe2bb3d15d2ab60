"""The chatglm family's memory as data, for the core planner (``openllm-hub plan``) and the early
refusal in ``load()``: shapes from config.json (ChatGLM-6B v1, ChatGLM2/3) or a GGUF file's header
metadata alone, never the weights.

ChatGLM-6B (v1): fused QKV (3h x h) and attention output with biases, a GELU MLP
(``dense_h_to_4h`` inner x h, ``dense_4h_to_h`` h x inner), two layer norms, the output layer
tied to the embedding. ChatGLM2/3: multi-query attention (QKV rows ``(heads + 2 * groups) *
head_dim``, a KV cache of ``2 * groups * head_dim`` values per token and layer), a SwiGLU MLP
fused into one ``2 * ffn x h`` matrix, RMS norms, an untied output layer. v2 and v3 share the
shapes, so no variant needs to be told apart here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from openllm_hub.plugin import CorruptFileError, ModelSpec, gguf_dims, read_gguf_metadata, stored_as
from openllm_hub_chatglm.spec import GLMSpec, detect_generation, read_spec


def from_spec(s: GLMSpec, name: str) -> ModelSpec:
    """A planner spec from a parsed :class:`~openllm_hub_chatglm.spec.GLMSpec`."""
    h, f = s.hidden_size, s.ffn_size
    qkv = (s.num_heads + 2 * s.num_kv_heads) * s.head_dim
    attn_out = s.num_heads * s.head_dim
    stored = s.quantization_bit or None
    if s.version == 1:
        return ModelSpec(
            name=name, family="chatglm", num_layers=s.num_layers, hidden_size=h, num_heads=s.num_heads,
            vocab_size=s.vocab_size, max_seq=s.max_length, layer_matrices=((qkv, h), (h, attn_out), (f, h), (h, f)),
            layer_small=qkv + h + f + h + 4 * h, embedding_params=s.vocab_size * h, mlp_width=f,
            kv_per_token_layer=2 * h, stored_bits=stored)
    return ModelSpec(
        name=name, family="chatglm", num_layers=s.num_layers, hidden_size=h, num_heads=s.num_heads,
        vocab_size=s.vocab_size, max_seq=s.max_length, layer_matrices=((qkv, h), (h, attn_out), (2 * f, h), (h, f)),
        layer_small=2 * h + (qkv if s.qkv_bias else 0),
        embedding_params=s.vocab_size * h * (1 if s.tie_word_embeddings else 2), mlp_width=2 * f,
        kv_per_token_layer=2 * s.num_kv_heads * s.head_dim, tp_divides=(s.num_kv_heads,), stored_bits=stored)


def from_config(folder: Path, cfg: dict[str, Any], name: str) -> ModelSpec:
    # the variant only decides tokenizer and chat format: plan v2/v3 configs that name neither as v2
    gen = detect_generation(cfg)
    return from_spec(read_spec(folder, cfg, "chatglm" if gen == 1 else "chatglm2" if gen == 2 else "auto"), name)


def from_gguf(path: Path) -> ModelSpec:
    d = gguf_dims(read_gguf_metadata(path), path)
    s = GLMSpec(variant="chatglm2", vocab_size=d["vocab"], hidden_size=d["hidden"], num_layers=d["layers"],
                num_heads=d["heads"], head_dim=d["hidden"] // d["heads"], num_kv_heads=d["kv_heads"],
                ffn_size=d["ffn"], eps=1e-5, qkv_bias=True, linear_bias=False, max_length=d["context"])
    base = from_spec(s, str(path))
    return stored_as(base, path)


def read(path: Path, fmt: str) -> ModelSpec:
    """The family's ``memory`` hook: ``hf`` (config.json) or ``gguf``."""
    if fmt == "gguf":
        return from_gguf(path)
    folder = path if path.is_dir() else path.parent
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptFileError(f"cannot read config.json: {exc}", where=folder) from None
    if not isinstance(cfg, dict):
        raise CorruptFileError("config.json is not a JSON object", where=folder)
    return from_config(folder, cfg, str(path))


#: ``openllm-hub plan chatglm-6b`` with no checkpoint: THUDM/chatglm-6b's config.json.
PUBLISHED: dict[str, ModelSpec] = {
    "chatglm-6b": from_spec(GLMSpec(variant="chatglm", vocab_size=130528, hidden_size=4096, num_layers=28,
                                    num_heads=32, head_dim=128, num_kv_heads=32, ffn_size=16384, eps=1e-5,
                                    qkv_bias=True, linear_bias=True, max_length=2048), "chatglm-6b"),
}
