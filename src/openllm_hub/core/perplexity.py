"""Perplexity of any model over a text, through ``Model.logits`` with a sliding window."""

from __future__ import annotations

import math
from dataclasses import dataclass

from openllm_hub.core.model import Model
from openllm_hub.core.progress import Progress
from openllm_hub.errors import InvalidParameterError


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    nll_per_token: float
    tokens_scored: int
    window: int
    stride: int


def perplexity(model: Model, text: str, *, window: int = 512, stride: int | None = None,
               progress: bool | None = None) -> PerplexityResult:
    """Score every token of ``text`` once: windows of ``window`` ids advance by ``stride``
    and only the ids not scored by the previous window count (each with at least
    ``window - stride`` ids of context, as in the usual sliding-window evaluation)."""
    import numpy as np

    stride = stride or window // 2
    if window < 2 or not 0 < stride < window:
        raise InvalidParameterError("need window >= 2 and 0 < stride < window (windows must overlap so that "
                                    "each window's first id has context)", where="perplexity")
    ids = model.tokenize(text, add_special=True)
    if len(ids) < 2:
        raise InvalidParameterError("the text is too short to score (fewer than 2 tokens)", where="perplexity")
    ctx = model.info.context_length
    if ctx is not None and window > ctx:
        window = ctx
        stride = min(stride, window - 1)
    total, count, scored_to = 0.0, 0, 1
    starts = list(range(0, max(len(ids) - 1, 1), stride))
    with Progress(total=len(ids) - 1, desc="perplexity", unit="tok", enabled=progress) as bar:
        for start in starts:
            chunk = ids[start : start + window]
            if len(chunk) < 2:
                break
            rows = np.asarray(model.logits(chunk), dtype=np.float64)
            rows = rows - rows.max(axis=-1, keepdims=True)
            logz = np.log(np.exp(rows).sum(axis=-1))
            first = max(scored_to, start + 1)  # absolute index of the first id not yet scored
            for pos in range(first, start + len(chunk)):
                r = pos - start - 1
                total += float(logz[r] - rows[r, chunk[r + 1]])
                count += 1
            bar.update(start + len(chunk) - first)
            scored_to = start + len(chunk)
            if scored_to >= len(ids):
                break
    nll = total / count
    return PerplexityResult(math.exp(nll), nll, count, window, stride)
