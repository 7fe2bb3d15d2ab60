"""How each GLM-130B tensor is split across tensor-parallel ranks, and slicing between degrees.

The rules (SwissArmyTransformer's mpu layers, GLM-130B's ``tools/convert_tp.py``):

* ``word_embeddings.weight``: vocab-parallel, rows split (dim 0); it is also the output layer.
* ``query_key_value``: column-parallel, rows split (dim 0). Rows are laid out per head
  (``[head0: q k v, head1: q k v, ...]``), so a contiguous split hands whole heads to ranks.
* ``dense_h_to_4h``: column-parallel GeGLU: each rank holds ``[x1 part; x2 part]``, so the
  full tensor is ``[x1 of all ranks; x2 of all ranks]`` and the two halves are split
  separately and kept paired (``groups=2``).
* ``attention.dense.weight``, ``dense_4h_to_h.weight``: row-parallel, columns split (dim 1).
* Layer norms, the row-parallel biases and the rotary ``inv_freq``: replicated.

Quantized shards add ``<weight>_scale`` (one scale per output row). Column-parallel scales
split with their rows; a row-parallel shard's scales belong to that shard only (each shard's
rows were scaled by its own slice's maximum), which is why quantized checkpoints are not
repartitioned here (see :mod:`openllm_hub_glm130b.checkpoint`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from openllm_hub_glm130b.spec import GLMConfig

if TYPE_CHECKING:  # pragma: no cover
    import torch


@dataclass(frozen=True)
class Rule:
    """``kind`` is vocab | column | glu | row | replicated; ``dim`` the split dimension."""

    kind: str
    dim: int = 0

    @property
    def groups(self) -> int:
        return 2 if self.kind == "glu" else 1


LAYER_RULES: dict[str, Rule] = {
    "input_layernorm.weight": Rule("replicated"),
    "input_layernorm.bias": Rule("replicated"),
    "attention.query_key_value.weight": Rule("column", 0),
    "attention.query_key_value.bias": Rule("column", 0),
    "attention.dense.weight": Rule("row", 1),
    "attention.dense.bias": Rule("replicated"),
    "attention.rotary_emb.inv_freq": Rule("replicated"),
    "post_attention_layernorm.weight": Rule("replicated"),
    "post_attention_layernorm.bias": Rule("replicated"),
    "mlp.dense_h_to_4h.weight": Rule("glu", 0),
    "mlp.dense_h_to_4h.bias": Rule("glu", 0),
    "mlp.dense_4h_to_h.weight": Rule("row", 1),
    "mlp.dense_4h_to_h.bias": Rule("replicated"),
}
TOP_RULES: dict[str, Rule] = {
    "transformer.word_embeddings.weight": Rule("vocab", 0),
    "transformer.final_layernorm.weight": Rule("replicated"),
    "transformer.final_layernorm.bias": Rule("replicated"),
}
#: The linear layers that INT8/INT4 quantization replaces (as GLM-130B's quantize()).
QUANTIZED_LINEARS = ("attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h")
#: Keys a checkpoint may carry beyond the required ones: the rotary frequency buffer that SAT saves
#: (per layer, ``attention.rotary_emb.inv_freq``, in GLM-130B's release; once, as
#: ``mixins.rotary-embedding.rotary_emb.inv_freq``, in checkpoints SwissArmyTransformer 0.2.12
#: saves). SAT never loads it (its RotaryEmbedding ignores it on load); it is replicated across
#: ranks, verified on opening (checkpoint.py) and otherwise unused.
OPTIONAL = ("rotary_emb.inv_freq",)
_LAYER_KEY = re.compile(r"^transformer\.layers\.(\d+)\.(.+)$")


def split_key(key: str) -> tuple[int | None, str]:
    """``transformer.layers.3.mlp.dense_4h_to_h.weight`` -> ``(3, "mlp.dense_4h_to_h.weight")``."""
    m = _LAYER_KEY.match(key)
    return (int(m.group(1)), m.group(2)) if m else (None, key)


def rule_of(key: str) -> Rule | None:
    """The split rule of a checkpoint key (None for a key GLM-130B does not have)."""
    if key.endswith(OPTIONAL):
        return Rule("replicated")
    layer, name = split_key(key)
    if layer is None:
        return TOP_RULES.get(name)
    if name.endswith(".weight_scale") and name[: -len(".weight_scale")] in QUANTIZED_LINEARS:
        base = LAYER_RULES[name[: -len("_scale")]]
        return base if base.kind in ("column", "glu") else Rule("row-scale")
    return LAYER_RULES.get(name)


def full_shapes(cfg: GLMConfig) -> dict[str, tuple[int, ...]]:
    """Every required key with its unpartitioned (TP=1), unquantized shape."""
    h, i, v = cfg.hidden_size, cfg.inner_hidden_size, cfg.vocab_size
    layer = {
        "input_layernorm.weight": (h,), "input_layernorm.bias": (h,),
        "attention.query_key_value.weight": (3 * h, h), "attention.query_key_value.bias": (3 * h,),
        "attention.dense.weight": (h, h), "attention.dense.bias": (h,),
        "post_attention_layernorm.weight": (h,), "post_attention_layernorm.bias": (h,),
        "mlp.dense_h_to_4h.weight": (2 * i, h), "mlp.dense_h_to_4h.bias": (2 * i,),
        "mlp.dense_4h_to_h.weight": (h, i), "mlp.dense_4h_to_h.bias": (h,),
    }
    out: dict[str, tuple[int, ...]] = {
        "transformer.word_embeddings.weight": (v, h),
        "transformer.final_layernorm.weight": (h,), "transformer.final_layernorm.bias": (h,),
    }
    for n in range(cfg.num_layers):
        for name, shape in layer.items():
            out[f"transformer.layers.{n}.{name}"] = shape
    return out


def local_shape(shape: tuple[int, ...], rule: Rule, world: int) -> tuple[int, ...]:
    if rule.kind in ("replicated", "row-scale"):
        return shape
    dims = list(shape)
    dims[rule.dim] //= world
    return tuple(dims)


def expected_local(cfg: GLMConfig, world: int, bits: int | None) -> dict[str, tuple[tuple[int, ...], str]]:
    """Each key of one rank's shard -> (shape, "float" | "int8") for a TP degree and quantization."""
    out: dict[str, tuple[tuple[int, ...], str]] = {}
    for key, shape in full_shapes(cfg).items():
        rule = rule_of(key)
        assert rule is not None
        loc = local_shape(shape, rule, world)
        _, name = split_key(key)
        if bits is not None and name.endswith(".weight") and name[: -len(".weight")] in QUANTIZED_LINEARS:
            out[key] = ((loc[0], loc[1] * bits // 8), "int8")
            out[key + "_scale"] = ((loc[0],), "float")
        else:
            out[key] = (loc, "float")
    return out


def take(parts: list[torch.Tensor], rule: Rule, rank: int, world: int) -> torch.Tensor:
    """Rank ``rank`` of ``world``'s piece of a tensor stored as ``parts`` (one per source rank).

    Works for any source and target degree that both divide the split dimension: each of the
    rule's groups (two for GeGLU) is a run of equal blocks, one per source rank, and the
    target takes its own contiguous range of every group. Only the blocks it needs are read.
    """
    import torch

    if rule.kind == "replicated":
        return parts[0].clone()
    if rule.kind == "row-scale":
        raise ValueError("row-parallel quantization scales cannot be repartitioned")
    dim, groups, src = rule.dim, rule.groups, len(parts)
    if src == world:
        return parts[rank].clone()
    block = parts[0].shape[dim] // groups  # one group's rows in one source shard
    per_group = block * src
    if per_group % world:
        raise ValueError(f"dimension {per_group} is not divisible by {world}")
    width = per_group // world
    pieces = []
    for g in range(groups):
        lo, hi = rank * width, (rank + 1) * width
        for p in range(lo // block, (hi - 1) // block + 1):
            a, b = max(lo, p * block), min(hi, (p + 1) * block)
            pieces.append(parts[p].narrow(dim, g * block + a - p * block, b - a))
    return torch.cat(pieces, dim=dim).contiguous() if len(pieces) > 1 else pieces[0].clone()
