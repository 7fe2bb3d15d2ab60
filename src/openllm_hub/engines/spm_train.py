"""Training sentencepiece tokenizers (for tiny test models and the demo model), once for every family.

A family says what differs (the corpus, the model type, the vocabulary size, its special
pieces, its normalisation); the trainer call, the in-memory model writer and the atomic
write of the ``.model`` file are here. :data:`LLAMA_CONVENTIONS` holds the settings of the
original LLaMA tokenizer that several families share.

Only the settings a caller gives are passed to the trainer: sentencepiece records every
explicitly set flag in the model file, so passing a default explicitly would change the
file's bytes. The same corpus and settings give the same file (set ``num_threads=1`` where
the merges must not depend on thread scheduling).

sentencepiece is imported inside the functions.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from openllm_hub.core.io import atomic_output

#: The original LLaMA tokenizer's conventions: BPE, byte fallback (any text encodes without
#: ``<unk>``), digits split one by one, a dummy prefix space, no normalisation (whitespace
#: kept), ``<unk>``=0 ``<s>``=1 ``</s>``=2, no padding piece; one thread, so merges are
#: reproducible.
LLAMA_CONVENTIONS: Mapping[str, Any] = {
    "model_type": "bpe",
    "byte_fallback": True,
    "split_digits": True,
    "add_dummy_prefix": True,
    "allow_whitespace_only_pieces": True,
    "remove_extra_whitespaces": False,
    "normalization_rule_name": "identity",
    "character_coverage": 1.0,
    "unk_id": 0,
    "bos_id": 1,
    "eos_id": 2,
    "pad_id": -1,
    "num_threads": 1,
}


def train_sentencepiece(lines: Iterable[str], *, vocab_size: int, model_type: str | None = None,
                        byte_fallback: bool | None = None, user_defined_symbols: Sequence[str] | None = None,
                        control_symbols: Sequence[str] | None = None, **options: Any) -> bytes:
    """Train a sentencepiece model on ``lines`` (one sentence each) and return the model file's
    bytes. ``options`` are further trainer flags (``character_coverage``, ``pad_id``, ...);
    a parameter left at None is not passed (the trainer's default applies)."""
    import sentencepiece as spm

    given: dict[str, Any] = {"model_type": model_type, "byte_fallback": byte_fallback,
                             "user_defined_symbols": user_defined_symbols, "control_symbols": control_symbols}
    flags: dict[str, Any] = {k: list(v) if isinstance(v, (list, tuple)) else v
                             for k, v in given.items() if v is not None}
    flags.update(options)
    flags.setdefault("minloglevel", 2)  # quiet: training logs are not the caller's output
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=buf, vocab_size=vocab_size, **flags)
    return buf.getvalue()


def train_sentencepiece_file(path: str | Path, lines: Iterable[str], *, vocab_size: int, **settings: Any) -> Path:
    """:func:`train_sentencepiece` and write the model to ``path`` (atomically: the file appears
    complete or not at all; an existing file is replaced)."""
    data = train_sentencepiece(lines, vocab_size=vocab_size, **settings)
    out = Path(path)
    with atomic_output(out, force=True) as tmp:
        tmp.write_bytes(data)
    return out


__all__ = ["LLAMA_CONVENTIONS", "train_sentencepiece", "train_sentencepiece_file"]
