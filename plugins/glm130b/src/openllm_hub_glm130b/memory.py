"""The glm130b family's memory as data, for the core planner (``openllm-hub plan``) and the
early refusal in ``load()``: shapes from ``glm130b_config.json`` alone (no torch, no shards).

GLM-130B's layer: fused QKV (3h x h), attention output (h x h), GeGLU ``dense_h_to_4h``
(2 * inner x h) and ``dense_4h_to_h`` (h x inner), all with biases, two layer norms; the output
layer shares the word embedding. Its engine splits the MLP width and the vocabulary over the
tensor-parallel ranks too, so a TP degree must divide them; layers can stay in CPU memory
(``offload_layers``).
"""

from __future__ import annotations

from pathlib import Path

from openllm_hub.plugin import ModelSpec
from openllm_hub_glm130b.spec import GLM_130B, GLMConfig, read_config


def spec_from_config(cfg: GLMConfig, name: str = "glm130b checkpoint", notes: str = "") -> ModelSpec:
    """A planner spec from a :class:`~openllm_hub_glm130b.spec.GLMConfig`."""
    h, inner = cfg.hidden_size, cfg.inner_hidden_size
    return ModelSpec(
        name=name, family="glm130b", num_layers=cfg.num_layers, hidden_size=h,
        num_heads=cfg.num_attention_heads, vocab_size=cfg.vocab_size, max_seq=cfg.max_sequence_length,
        layer_matrices=((3 * h, h), (h, h), (2 * inner, h), (h, inner)),
        layer_small=3 * h + h + 2 * inner + h + 4 * h, embedding_params=cfg.vocab_size * h, mlp_width=2 * inner,
        kv_per_token_layer=2 * h, notes=notes, tp_divides=(inner, cfg.vocab_size),
        stored_bits=cfg.quantization_bit_width, dtype_bytes=4 if cfg.dtype == "fp32" else 2, offloadable=True)


def read(path: Path, fmt: str) -> ModelSpec:
    """The family's ``memory`` hook: a SAT checkpoint folder (or its config file)."""
    return spec_from_config(read_config(path), name=str(path))


#: ``openllm-hub plan glm-130b`` with no checkpoint: the published model.
PUBLISHED: dict[str, ModelSpec] = {
    "glm-130b": spec_from_config(GLM_130B, "glm-130b", notes="THUDM/GLM-130B configs/model_glm_130b.sh"),
}
