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
    """Fill the blanks of each prompt (``[gMASK]`` appended when there is none), streaming.

    Several prompts without beam search are filled together (``GLM130BModel.fill_blanks_batch``:
    one forward pass per step for all of them, at most ``parallel`` at a time; None: all), with
    the serial run's output: each prompt's text, then a newline, in input order (the first
    unfinished prompt's text streams; the others' waits until the prompts before them are
    printed). Beam search fills them one after the other."""

    prompts: tuple[str, ...]
    num_beams: int | None = None
    params: tuple[tuple[str, Any], ...] = ()
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    min_new_tokens: int = 0
    stream: bool = True
    parallel: int | None = None

    def __call__(self, model: Any) -> list[dict[str, Any]]:
        if self.num_beams is None and len(self.prompts) > 1:
            return self._batched(model)
        out = []
        for prompt in self.prompts:
            res = model.fill_blanks(prompt, num_beams=self.num_beams, on_text=_write if self.stream else None,
                                    length_penalty=self.length_penalty,
                                    no_repeat_ngram_size=self.no_repeat_ngram_size,
                                    min_new_tokens=self.min_new_tokens, **dict(self.params))
            if self.stream:
                _write("\n")
            out.append(_result(prompt, res))
        return out

    def _batched(self, model: Any) -> list[dict[str, Any]]:
        held: list[list[str]] = [[] for _ in self.prompts]  # text not printed yet, per prompt
        done = [False] * len(self.prompts)
        shown = 0  # prompts printed whole

        def show() -> None:
            nonlocal shown
            while shown < len(self.prompts):
                if held[shown]:
                    _write("".join(held[shown]))
                    held[shown].clear()
                if not done[shown]:
                    return
                _write("\n")
                shown += 1

        def on_text(i: int, text: str) -> None:
            held[i].append(text)
            if i == shown:
                show()

        def on_done(i: int, fill: Any) -> None:
            done[i] = True
            show()

        stream = {"on_text": on_text, "on_done": on_done} if self.stream else {}
        fills = model.fill_blanks_batch(list(self.prompts), slots=self.parallel, **stream, **dict(self.params))
        return [_result(p, f) for p, f in zip(self.prompts, fills, strict=True)]


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _result(prompt: str, fill: Any) -> dict[str, Any]:
    return {"prompt": prompt, "text": fill.text, "blanks": list(fill.blanks)}


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
