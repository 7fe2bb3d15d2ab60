"""Jobs for rank 0 of a tensor-parallel run: picklable callables that take the model.

:class:`GenerateJob` is what ``glm130b-run`` and ``python -m openllm_hub_glm130b`` run (it
streams to stdout); :class:`ProbeJob` returns logits, greedy continuations and memory figures
(used by the tests, the benchmark and ``scripts/gpu_check.py``).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class GenerateJob:
    """Fill the blanks of each prompt (``[gMASK]`` appended when there is none), streaming."""

    prompts: tuple[str, ...]
    num_beams: int | None = None
    params: tuple[tuple[str, Any], ...] = ()
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    min_new_tokens: int = 0
    stream: bool = True

    def __call__(self, model: Any) -> list[dict[str, Any]]:
        out = []
        for prompt in self.prompts:
            def emit(text: str) -> None:
                sys.stdout.write(text)
                sys.stdout.flush()

            res = model.fill_blanks(prompt, num_beams=self.num_beams, on_text=emit if self.stream else None,
                                    length_penalty=self.length_penalty,
                                    no_repeat_ngram_size=self.no_repeat_ngram_size,
                                    min_new_tokens=self.min_new_tokens, **dict(self.params))
            if self.stream:
                sys.stdout.write("\n")
                sys.stdout.flush()
            out.append({"prompt": prompt, "text": res.text, "blanks": list(res.blanks)})
        return out


@dataclass(frozen=True)
class ProbeJob:
    """Logits of id sequences, greedy continuations of prompts, embeddings of texts
    (``Model.embed``), weight bytes and speed."""

    ids: tuple[tuple[int, ...], ...] = ()
    prompts: tuple[str, ...] = ()
    max_new_tokens: int = 8
    embed: tuple[str, ...] = ()

    def __call__(self, model: Any) -> dict[str, Any]:
        logits = [model.logits(list(i)) for i in self.ids]
        greedy, speeds = [], []
        for p in self.prompts:
            t0 = time.perf_counter()
            c = model.generate(p, max_new_tokens=self.max_new_tokens, temperature=0.0, seed=0)
            greedy.append(list(c.token_ids))
            speeds.append(len(c.token_ids) / max(time.perf_counter() - t0, 1e-9))
        return {"logits": logits, "greedy": greedy, "tokens_per_s": speeds,
                "embeddings": model.embed(list(self.embed)) if self.embed else [],
                "weight_bytes": model.backend.engine.weight_bytes(), "info": model.info.as_dict()}
