"""A test-side HF -> GGUF converter for a few llama.cpp architectures (qwen2, qwen3, gemma2/3, phi3).

It writes the GGUF a user would get from llama.cpp's own ``convert_hf_to_gguf.py`` for a
transformers model of that architecture, so the generic ``gguf`` family can be checked against
transformers on the same weights. The conventions follow that converter and gguf-py's
constants (``gguf.constants.MODEL_TENSORS`` / ``TENSOR_NAMES``; the names are checked against
them below):

* tensor names: ``model.embed_tokens`` -> ``token_embd``, ``model.norm`` -> ``output_norm``,
  ``lm_head`` -> ``output`` (absent when tied: llama.cpp reuses ``token_embd``), per block
  ``self_attn.{q,k,v,o}_proj`` -> ``attn_{q,k,v,output}``, ``mlp.{gate,up,down}_proj`` ->
  ``ffn_{gate,up,down}``, ``input_layernorm`` -> ``attn_norm``;
  ``post_attention_layernorm`` -> ``ffn_norm``, except in Gemma 2, whose four norms are
  ``attn_norm``, ``post_attention_norm``, ``ffn_norm`` (pre-feedforward) and ``post_ffw_norm``
  (Gemma 3 too); Qwen3's and Gemma 3's ``self_attn.{q,k}_norm`` -> ``attn_{q,k}_norm``;
* no q/k row permutation: these architectures use NEOX-style rotary embeddings in llama.cpp,
  which is transformers' ``rotate_half`` layout (only the ``llama`` architecture permutes);
* Gemma's RMS norms (q/k norms included) scale by ``1 + weight``: the converter stores
  ``weight + 1``;
* Phi-3's fused ``qkv_proj`` -> ``attn_qkv`` and ``gate_up_proj`` -> ``ffn_up`` (gate rows
  first; llama.cpp's fused SwiGLU gates with the first half), as stored;
* hyper-parameters under ``{arch}.``: context, width, blocks, FFN, heads, KV heads, RMS
  epsilon, rope base (Gemma 3: the full layers'; llama.cpp gives its sliding layers 10,000)
  and dimensions, key/value lengths; Gemma 2 and 3 their sliding window, Gemma 2 the attention
  and final logit soft-capping.

The vocabulary is the core's tiny SentencePiece-style one (:func:`add_tiny_vocab`); the
model's ``vocab_size`` must be its size.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from openllm_hub.core.gguf_tiny import add_tiny_vocab
from openllm_hub.engines.gguf_write import GGUFTensor, file_type, write_gguf_file

#: HF per-block name suffix -> GGUF per-block name, per architecture.
_COMMON = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
           "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
           "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm"}
BLOCK_NAMES: dict[str, dict[str, str]] = {
    "qwen2": {**_COMMON, "post_attention_layernorm": "ffn_norm"},
    "qwen3": {**_COMMON, "post_attention_layernorm": "ffn_norm", "self_attn.q_norm": "attn_q_norm",
              "self_attn.k_norm": "attn_k_norm"},
    "gemma2": {**_COMMON, "post_attention_layernorm": "post_attention_norm", "pre_feedforward_layernorm": "ffn_norm",
               "post_feedforward_layernorm": "post_ffw_norm"},
    "gemma3": {**_COMMON, "post_attention_layernorm": "post_attention_norm", "pre_feedforward_layernorm": "ffn_norm",
               "post_feedforward_layernorm": "post_ffw_norm", "self_attn.q_norm": "attn_q_norm",
               "self_attn.k_norm": "attn_k_norm"},
    "phi3": {"self_attn.qkv_proj": "attn_qkv", "self_attn.o_proj": "attn_output", "mlp.gate_up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"},
}
#: Control tokens llama.cpp's vocabulary loader looks up by name for an architecture (Phi-3's chat
#: and end-of-text tokens), as the real models' vocabularies have them.
CONTROLS: dict[str, tuple[str, ...]] = {
    "phi3": ("<|endoftext|>", "<|assistant|>", "<|end|>", "<|system|>", "<|user|>"),
}
#: Architectures whose RMS norms multiply by (1 + weight).
NORM_PLUS_ONE = {"gemma2", "gemma3"}


def _gguf_name(arch: str, hf: str) -> str:
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    if hf == "lm_head.weight":
        return "output.weight"
    parts = hf.split(".")
    if parts[:2] != ["model", "layers"]:
        raise KeyError(f"no GGUF name for {hf!r}")
    block, rest = parts[2], ".".join(parts[3:])
    stem, kind = rest.rsplit(".", 1)
    return f"blk.{block}.{BLOCK_NAMES[arch][stem]}.{kind}"


def _check_names(arch: str, names: list[str]) -> None:
    """Every name is one of llama.cpp's tensors of ``arch`` (gguf-py's table)."""
    consts = gguf.constants
    model_arch = next(a for a, n in consts.MODEL_ARCH_NAMES.items() if n == arch)
    allowed = {consts.TENSOR_NAMES[t] for t in consts.MODEL_TENSORS[model_arch]}
    for name in names:
        stem = name.rsplit(".", 1)[0]
        generic = stem if not stem.startswith("blk.") else "blk.{bid}." + stem.split(".", 2)[2]
        assert generic in allowed, f"{name} is not a llama.cpp {arch} tensor"


def _metadata(arch: str, cfg: Any, writer: gguf.GGUFWriter, chat_template: str | None) -> None:
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    writer.add_type("model")
    writer.add_name(f"tiny-{arch}")
    writer.add_file_type(file_type("f32"))
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    rope = cfg.rope_parameters if isinstance(getattr(cfg, "rope_parameters", None), dict) else {}
    # per layer type (Gemma 3): the file holds the full-attention layers' base; llama.cpp gives the
    # sliding layers 10,000 as transformers' rope_local_base_freq
    rope = rope.get("full_attention", rope)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))))
    factor = getattr(cfg, "partial_rotary_factor", None) or rope.get("partial_rotary_factor", 1.0)
    rotary = int(head_dim * float(factor))
    writer.add_rope_dimension_count(rotary)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    if arch in ("gemma2", "gemma3"):
        writer.add_sliding_window(cfg.sliding_window)
    if arch == "gemma2":
        writer.add_attn_logit_softcapping(cfg.attn_logit_softcapping)
        writer.add_final_logit_softcapping(cfg.final_logit_softcapping)
    add_tiny_vocab(writer, cfg.vocab_size, chat_template=chat_template, controls=CONTROLS.get(arch, ()))


def write_arch_gguf(model: Any, arch: str, dst: Path, *, chat_template: str | None = None,
                    edit: Callable[[list[GGUFTensor]], list[GGUFTensor]] | None = None) -> Path:
    """Write the transformers causal LM ``model`` (of llama.cpp architecture ``arch``) as an
    f32 GGUF at ``dst``; ``edit`` changes the tensor list first (bad-input tests)."""
    cfg = model.config
    state = {k: v.detach().to("cpu").float().numpy() for k, v in model.state_dict().items()}
    if getattr(cfg, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    tensors: list[GGUFTensor] = []
    for hf, value in state.items():
        if "rotary_emb" in hf:
            continue
        arr = np.ascontiguousarray(value, dtype=np.float32)
        if arch in NORM_PLUS_ONE and hf.endswith("norm.weight"):
            arr = arr + np.float32(1.0)
        tensors.append(GGUFTensor(_gguf_name(arch, hf), arr.shape, gguf.GGMLQuantizationType.F32,
                                  lambda arr=arr: [arr]))
    if edit is None:
        _check_names(arch, [t.name for t in tensors])
    else:
        tensors = edit(tensors)
    write_gguf_file(dst, arch, lambda w: _metadata(arch, cfg, w, chat_template), tensors)
    return dst


__all__ = ["BLOCK_NAMES", "NORM_PLUS_ONE", "write_arch_gguf"]
