"""Independent reference runs of LLaMA checkpoints for tests and benchmarks: transformers on
a HuggingFace folder, llama.cpp (``llama_cpp.Llama`` directly, not through the SDK) on a GGUF.

Both sides expose logits for a list of ids and a plain greedy continuation (argmax of the
last row, no sampler), so a converted file can be checked against its source without
the SDK's engines in the loop.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

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


@contextlib.contextmanager
def _without_extra_buffer_types() -> Iterator[None]:
    """Load with ``use_extra_bufts=False`` (no weight repacking into AMX/other CPU layouts).

    ``llama_cpp.Llama`` has no argument for it, so the default-params function it calls is
    wrapped while the model loads. Reason: on CPUs that report AMX-INT8 but where the kernel
    does not grant the AMX state (seen on this project's build machines), llama.cpp 0.3.36's
    AMX path segfaults on q8_0 matrices as soon as a batch has more than one token. Repacking
    only changes the weights' memory layout, never the model.
    """
    import llama_cpp
    import llama_cpp.llama as llama_mod

    original = llama_cpp.llama_model_default_params

    def params() -> Any:
        p = original()
        p.use_extra_bufts = False
        return p

    llama_mod.llama_cpp.llama_model_default_params = params  # type: ignore[attr-defined]
    try:
        yield
    finally:
        llama_mod.llama_cpp.llama_model_default_params = original  # type: ignore[attr-defined]


class GGUFReference:
    """A GGUF run by llama.cpp with an F32 KV cache, all logits kept."""

    def __init__(self, path: str | Path, *, n_ctx: int = 128, n_threads: int = 2, f32_cache: bool = True) -> None:
        import llama_cpp

        kw: dict[str, Any] = {"type_k": GGML_TYPE_F32, "type_v": GGML_TYPE_F32} if f32_cache else {}
        with _without_extra_buffer_types():
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
