"""A LLaMA-style sentencepiece tokenizer trained on the demo corpus.

Same settings as the original LLaMA tokenizer: BPE, ``<unk>``=0 ``<s>``=1 ``</s>``=2, no
padding piece, byte fallback (so any text, newlines included, encodes without ``<unk>``),
digits split one by one, a dummy prefix space, no normalization.
"""

from __future__ import annotations

import json
from pathlib import Path

DEFAULT_VOCAB = 3072
#: For the toy pipeline run in tests: enough for every character of a few hundred documents.
TINY_VOCAB = 1200

#: The Alpaca prompt (Stanford Alpaca's wording), so its words get pieces of their own.
ALPACA_PROMPT = ("Below is an instruction that describes a task. Write a response that appropriately completes "
                 "the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n{output}")
ALPACA_PROMPT_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                       "context. Write a response that appropriately completes the request.\n\n"
                       "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n{output}")


def alpaca_lines(path: str | Path) -> list[str]:
    """The lines of every example of an Alpaca json file, laid out in the Alpaca prompt."""
    rows = json.loads(Path(path).read_text(encoding="utf-8"))
    out: list[str] = []
    for r in rows:
        text = (ALPACA_PROMPT_INPUT if r.get("input") else ALPACA_PROMPT).format(**r)
        out += [ln for ln in text.split("\n") if ln]
    return out


def train_tokenizer(lines: list[str], out: str | Path, *, vocab_size: int = DEFAULT_VOCAB) -> Path:
    """Train on ``lines`` (one sentence each) and write the model file to ``out``."""
    from openllm_hub.engines.spm_train import LLAMA_CONVENTIONS, train_sentencepiece_file

    return train_sentencepiece_file(
        out, lines, vocab_size=vocab_size, **LLAMA_CONVENTIONS,
        hard_vocab_limit=False,  # a small corpus may support fewer pieces; take what it has
        max_sentence_length=1 << 16,
    )
