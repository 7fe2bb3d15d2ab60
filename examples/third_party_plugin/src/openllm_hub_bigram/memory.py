"""The bigram family's memory as data, so ``openllm-hub plan`` and ``load()``'s early check know it.

A bigram model is one (vocab x vocab) float32 table of next-token log-probabilities: no layers,
no attention, no KV cache; generation keeps one row of logits. The table's shape comes from the
safetensors header alone (the tensor data is not read).
"""

from __future__ import annotations

from pathlib import Path

from openllm_hub.plugin import CorruptFileError, ModelSpec, read_safetensors_header

#: The engine keeps no context limit; plans use the one its ModelInfo reports.
CONTEXT = 4096


def read(path: Path, fmt: str) -> ModelSpec:
    """The family's ``memory`` hook: the ``logp`` table's shape from the file's header."""
    entry = read_safetensors_header(path).get("logp")
    shape = entry.get("shape") if isinstance(entry, dict) else None
    if not isinstance(shape, list) or len(shape) != 2 or shape[0] != shape[1]:
        raise CorruptFileError("expected a square 2-D 'logp' tensor", where=path)
    vocab = int(shape[0])
    # the table is the "embedding"; ModelSpec counts 2 * hidden more parameters (a final norm)
    return ModelSpec(name=str(path), family="bigram", num_layers=0, hidden_size=vocab, num_heads=1,
                     vocab_size=vocab, max_seq=CONTEXT, layer_matrices=(), layer_small=0,
                     embedding_params=vocab * vocab - 2 * vocab, mlp_width=0, attention=False, dtype_bytes=4,
                     notes="one float32 table; no layers, no KV cache")
