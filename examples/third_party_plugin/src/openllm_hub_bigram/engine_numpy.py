"""The bigram engine: a (258 x 258) table of next-byte log-probabilities.

Ids 0-255 are bytes, 256 is BOS and 257 EOS. Saved as safetensors with
``__metadata__["format"] = "openllm-hub-bigram"``, which is how ``detect`` knows it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from openllm_hub.plugin import CorruptFileError, GenerationConfig, Model, ModelInfo, generate_tokens

FORMAT = "openllm-hub-bigram"
BOS, EOS, VOCAB = 256, 257, 258


def train(texts: Sequence[str], smoothing: float = 0.05) -> npt.NDArray[np.float32]:
    """Count byte bigrams over ``texts`` (each a document: BOS ... EOS) into log-probs."""
    counts = np.full((VOCAB, VOCAB), smoothing, dtype=np.float64)
    counts[:, BOS] = 0.0  # BOS is never predicted
    for text in texts:
        ids = [BOS, *text.encode("utf-8"), EOS]
        np.add.at(counts, (ids[:-1], ids[1:]), 1.0)
    counts[EOS] = 1.0  # rows after EOS are never used; keep them valid
    with np.errstate(divide="ignore"):
        logp = np.log(counts / counts.sum(axis=1, keepdims=True))
    table: npt.NDArray[np.float32] = np.maximum(logp, -1e4).astype(np.float32)
    return table


def save(table: npt.NDArray[np.float32], path: Path) -> None:
    from safetensors.numpy import save_file

    save_file({"logp": table}, str(path), metadata={"format": FORMAT, "version": "1"})


class BigramModel(Model):
    default_chat_template = "plain"

    def __init__(self, path: Path, device: str) -> None:
        from safetensors.numpy import load_file

        table = load_file(str(path)).get("logp")
        if table is None or table.shape != (VOCAB, VOCAB):
            raise CorruptFileError(f"expected a {VOCAB}x{VOCAB} 'logp' tensor", where=path)
        self._table: npt.NDArray[np.float32] = np.asarray(table, dtype=np.float32)
        info = ModelInfo(family="bigram", format="bigram", engine="numpy", path=str(path), device=device,
                         parameters=int(table.size), context_length=4096, vocab_size=VOCAB, dtype="fp32")
        super().__init__(info, eos_token_ids=[EOS])

    def _tokenize(self, text: str, add_special: bool) -> list[int]:
        return ([BOS] if add_special else []) + list(text.encode("utf-8"))

    def _special_tokens(self) -> dict[str, int]:
        # what chat templates may name (e.g. vicuna's "</s>"); byte text can never produce them
        return {"<s>": BOS, "</s>": EOS}

    def _detokenize(self, ids: Sequence[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def _logits(self, ids: list[int]) -> npt.NDArray[np.float32]:
        rows: npt.NDArray[np.float32] = self._table[np.asarray(ids)]
        return rows

    def _token_stream(self, prompt_ids: list[int], config: GenerationConfig) -> Iterator[int]:
        state = {"last": prompt_ids[-1]}

        def step(new_ids: Sequence[int]) -> npt.NDArray[np.float32]:
            state["last"] = new_ids[-1]
            row: npt.NDArray[np.float32] = self._table[state["last"]]
            return row

        return generate_tokens(step, prompt_ids, config, context_length=self.info.context_length)
