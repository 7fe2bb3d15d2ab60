"""The rwkv family's memory as data, for the core planner (``openllm-hub plan``) and the early
refusal in ``load()``: shapes from a ``.pth`` checkpoint's tensor index (names, shapes and dtypes
read from its pickle without torch and without the tensor data) or a transformers config.json.

RWKV is an RNN: instead of a KV cache it keeps a fixed fp32 state per sequence -- per layer
the token-shift vectors of the time-mix and channel-mix blocks, and for RWKV-4 the three WKV
accumulators (``5 * n_embd``), for RWKV-5+ one ``head_size x head_size`` matrix per head.
"""

from __future__ import annotations

import json
from pathlib import Path

from openllm_hub.plugin import CorruptFileError, InvalidParameterError, ModelSpec
from openllm_hub_rwkv.checkpoint import read_pth_index
from openllm_hub_rwkv.spec import analyse

#: RWKV has no hard context limit; plans use the training context of the released models.
DEFAULT_CONTEXT = 4096
_NOTE = "RNN: a fixed state per sequence instead of a KV cache"


def v4_spec(name: str, *, layers: int, hidden: int, vocab: int, seq: int = DEFAULT_CONTEXT,
            att: int | None = None, ffn: int | None = None) -> ModelSpec:
    """An RWKV-4 spec from its dimensions (transformers' RwkvForCausalLM has this layout)."""
    h, a, f = hidden, att or hidden, ffn or 4 * hidden
    return ModelSpec(name=name, family="rwkv", num_layers=layers, hidden_size=h, num_heads=h, vocab_size=vocab,
                     max_seq=seq, layer_matrices=((a, h), (a, h), (a, h), (h, a), (f, h), (h, f), (h, h)),
                     layer_small=12 * h, embedding_params=2 * vocab * h, mlp_width=f,
                     state_elements=5 * layers * h, attention=False, notes=_NOTE)


def from_pth(path: Path) -> ModelSpec:
    """Shapes from the checkpoint's tensor index: block 0's 2-D weights are the matrices; the
    other block tensors (mixes, decays, LoRA-style factors, norms) are averaged over the layers,
    since RWKV-7's first block has fewer."""
    index = read_pth_index(path)
    arch = analyse(index.tensors, where=path, extras=index.extras)

    def matrix(name: str, shape: tuple[int, ...]) -> bool:
        return name.endswith(".weight") and len(shape) == 2

    mats = tuple((t.shape[0], t.shape[1]) for k, t in index.tensors.items()
                 if k.startswith("blocks.0.") and matrix(k, t.shape))
    rest = sum(t.numel for k, t in index.tensors.items()
               if k.startswith("blocks.") and ".ln0." not in k and not matrix(k, t.shape))
    small = -(-rest // arch.n_layer)
    c = arch.n_embd
    state = 5 * c if arch.major == 4 else 2 * c + arch.n_head * arch.head_size * arch.head_size
    return ModelSpec(name=str(path), family="rwkv", num_layers=arch.n_layer, hidden_size=c,
                     num_heads=arch.n_head if arch.major >= 5 else c, vocab_size=arch.vocab_size,
                     max_seq=DEFAULT_CONTEXT, layer_matrices=mats, layer_small=small,
                     embedding_params=2 * arch.vocab_size * c, mlp_width=arch.n_ffn,
                     state_elements=arch.n_layer * state, attention=False, notes=_NOTE)


def from_hf(folder: Path) -> ModelSpec:
    where = folder / "config.json"
    try:
        d = json.loads(where.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptFileError(f"cannot read config.json: {exc}", where=where) from None
    try:
        return v4_spec(str(folder), layers=int(d["num_hidden_layers"]), hidden=int(d["hidden_size"]),
                       vocab=int(d["vocab_size"]), seq=int(d.get("context_length") or DEFAULT_CONTEXT),
                       att=d.get("attention_hidden_size"), ffn=d.get("intermediate_size"))
    except KeyError as exc:
        raise InvalidParameterError(f"config.json lacks {exc}", where=where) from None
    except (TypeError, ValueError) as exc:
        raise InvalidParameterError(f"config.json has an invalid size: {exc}", where=where) from None


def read(path: Path, fmt: str) -> ModelSpec:
    """The family's ``memory`` hook: ``rwkv-pth`` (a .pth file) or ``hf`` (a transformers folder)."""
    if fmt == "hf":
        return from_hf(path if path.is_dir() else path.parent)
    return from_pth(path)


#: ``openllm-hub plan rwkv-4-raven-7b`` with no checkpoint.
PUBLISHED: dict[str, ModelSpec] = {
    "rwkv-4-raven-7b": v4_spec("rwkv-4-raven-7b", layers=32, hidden=4096, vocab=50277),
}
