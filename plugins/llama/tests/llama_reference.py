"""Independent reference runs of LLaMA checkpoints for tests and benchmarks: transformers on
a HuggingFace folder, llama.cpp (``llama_cpp.Llama`` directly, not through the SDK) on a GGUF.

Both sides expose logits for a list of ids and a plain greedy continuation (argmax of the
last row, no sampler), so a converted file can be checked against its source without
the SDK's engines in the loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from openllm_hub.engines.llama_cpp import model_params

#: ggml type id of F32, for llama.cpp's KV cache (``type_k``/``type_v``)
GGML_TYPE_F32 = 0


class HFReference:
    """A HuggingFace LLaMA folder loaded by transformers in float32 from disk."""

    def __init__(self, path: str | Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        torch.manual_seed(0)
        model: Any = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
        self.model = model.eval()

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        import torch

        with torch.no_grad():
            out = self.model(torch.tensor([list(ids)])).logits[0]
        return np.asarray(out.numpy(), dtype=np.float32)

    def greedy(self, ids: Sequence[int], n: int) -> list[int]:
        """``n`` argmax tokens after ``ids`` (no stopping at eos; the whole sequence is re-run
        each step, which keeps this independent of transformers' cache API)."""
        seq = list(ids)
        for _ in range(n):
            seq.append(int(np.argmax(self.logits(seq)[-1])))
        return seq[len(ids):]


class GGUFReference:
    """A GGUF run by llama.cpp with an F32 KV cache, all logits kept."""

    def __init__(self, path: str | Path, *, n_ctx: int = 128, n_threads: int = 2, f32_cache: bool = True) -> None:
        import llama_cpp

        kw: dict[str, Any] = {"type_k": GGML_TYPE_F32, "type_v": GGML_TYPE_F32} if f32_cache else {}
        # No weight repacking: see openllm_hub.engines.llama_cpp.default_repack (the AMX path
        # crashes on this project's build machines); repacking never changes the results.
        with model_params(use_extra_bufts=False):
            self.llm: Any = llama_cpp.Llama(str(path), n_ctx=n_ctx, logits_all=True, verbose=False, n_threads=n_threads,
                                       n_threads_batch=n_threads, seed=0, **kw)

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(list(ids))
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)

    def greedy(self, ids: Sequence[int], n: int) -> list[int]:
        self.llm.reset()
        self.llm.eval(list(ids))
        out: list[int] = []
        for _ in range(n):
            tok = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
            out.append(tok)
            self.llm.eval([tok])
        return out

    def close(self) -> None:
        self.llm.close()


def relative_diff(ref: np.ndarray, got: np.ndarray) -> float:
    """max |ref - got| divided by the reference's logit range (max - min)."""
    ref64, got64 = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    return float(np.max(np.abs(ref64 - got64)) / (np.max(ref64) - np.min(ref64)))
