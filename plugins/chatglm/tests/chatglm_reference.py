"""Mapping a ChatGLM2/3 checkpoint onto transformers' ``GlmForCausalLM`` (model_type ``glm``),
the independent implementation the tests and benchmarks compare against.

The architectures agree once the keys are renamed and the fused ``query_key_value`` is split
into ``q_proj``/``k_proj``/``v_proj`` (rows ``[heads*d | groups*d | groups*d]``). transformers'
GLM rotary covers ``partial_rotary_factor=0.5`` of each head with interleaved pairs and
``inv_freq = theta**(-arange(0, d/2, 2) / (d/2))``, which is ChatGLM2's rotary exactly; its
MLP's ``gate_up_proj`` is ``dense_h_to_4h`` (gate rows first). transformers is imported here,
never by the engine. This mapping starts from the project's :class:`GLMSpec`; the fixture in
``data/official_glm2/`` (``test_official_parity_glm2.py``) is the independent check, configured
by transformers' own config parsing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from openllm_hub_chatglm.spec import GLMSpec


def glm_config(spec: GLMSpec) -> Any:
    from transformers import GlmConfig

    if spec.version == 1:
        raise ValueError("transformers has no ChatGLM-6B (v1) implementation")
    # rope_ratio: ChatGLM3(-32k) multiplies the rotary base by it; ChatGLM2-32k divides the
    # positions by it, which is transformers' "linear" scaling (the releases' RotaryEmbedding)
    if spec.version == 2 and spec.rope_ratio != 1.0:
        rope = {"rope_type": "linear", "factor": spec.rope_ratio, "rope_theta": 10000.0}
    else:
        rope = {"rope_type": "default", "rope_theta": 10000.0 * spec.rope_ratio}
    return GlmConfig(
        vocab_size=spec.vocab_size, hidden_size=spec.hidden_size, intermediate_size=spec.ffn_size,
        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads, num_key_value_heads=spec.num_kv_heads,
        head_dim=spec.head_dim, rms_norm_eps=spec.eps, attention_bias=spec.qkv_bias,
        max_position_embeddings=spec.max_length, pad_token_id=0, eos_token_id=spec.eos_token_id,
        tie_word_embeddings=False, rope_parameters={**rope, "partial_rotary_factor": 0.5},
    )


def glm_state_dict(sd: dict[str, torch.Tensor], spec: GLMSpec) -> dict[str, torch.Tensor]:
    """ChatGLM2/3 official keys -> GlmForCausalLM keys."""
    import torch

    out: dict[str, torch.Tensor] = {
        "model.embed_tokens.weight": sd["transformer.embedding.word_embeddings.weight"],
        "model.norm.weight": sd["transformer.encoder.final_layernorm.weight"],
        "lm_head.weight": sd["transformer.output_layer.weight"],
    }
    q_rows, kv_rows = spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
    for i in range(spec.num_layers):
        src, dst = f"transformer.encoder.layers.{i}.", f"model.layers.{i}."
        for kind in ("weight", "bias"):
            key = f"{src}self_attention.query_key_value.{kind}"
            if key in sd:
                q, k, v = torch.split(sd[key], [q_rows, kv_rows, kv_rows], dim=0)
                out[f"{dst}self_attn.q_proj.{kind}"] = q
                out[f"{dst}self_attn.k_proj.{kind}"] = k
                out[f"{dst}self_attn.v_proj.{kind}"] = v
        out[f"{dst}self_attn.o_proj.weight"] = sd[f"{src}self_attention.dense.weight"]
        out[f"{dst}mlp.gate_up_proj.weight"] = sd[f"{src}mlp.dense_h_to_4h.weight"]
        out[f"{dst}mlp.down_proj.weight"] = sd[f"{src}mlp.dense_4h_to_h.weight"]
        out[f"{dst}input_layernorm.weight"] = sd[f"{src}input_layernorm.weight"]
        out[f"{dst}post_attention_layernorm.weight"] = sd[f"{src}post_attention_layernorm.weight"]
    return out


def load_transformers_glm(folder: Any, spec: GLMSpec, dtype: torch.dtype | None = None) -> Any:
    """A ``GlmForCausalLM`` holding the weights of the ChatGLM2/3 folder ``folder``."""
    import torch
    from openllm_hub_chatglm.checkpoint import iter_tensors
    from transformers import GlmForCausalLM

    sd = {k: v for k, v in iter_tensors(folder) if not k.endswith("inv_freq")}
    model = GlmForCausalLM(glm_config(spec))
    missing, unexpected = model.load_state_dict(glm_state_dict(sd, spec), strict=False)
    if unexpected or [m for m in missing if "rotary" not in m]:
        raise ValueError(f"key mapping incomplete: missing {missing}, unexpected {unexpected}")
    return model.to(dtype or torch.float32).eval()  # type: ignore[arg-type]
