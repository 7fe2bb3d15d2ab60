"""Seeded sampling from a row of logits, shared by every engine that does not sample itself.

Works on numpy arrays (an engine on torch passes ``logits.float().numpy()``), so plugins get
identical behaviour for identical parameters. The order follows llama.cpp's classic chain:
repetition penalty over a window, top-k, top-p, temperature, then a draw. A structured-output
constraint (:mod:`openllm_hub.core.constrain`) masks the row first: the one place every
torch/numpy engine applies it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from openllm_hub.core.config import GenerationConfig

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import numpy.typing as npt


def apply_repeat_penalty(
    logits: npt.NDArray[np.float32], history: Sequence[int], penalty: float, last_n: int
) -> npt.NDArray[np.float32]:
    """CTRL-style penalty (as llama.cpp): divide positive, multiply negative logits of
    tokens seen in the last ``last_n`` ids."""
    import numpy as np

    if penalty == 1.0 or last_n == 0 or not history:
        return logits
    window = np.unique(np.asarray(history[-last_n:], dtype=np.int64))
    window = window[(window >= 0) & (window < logits.shape[-1])]
    out = logits.copy()
    vals = out[window]
    out[window] = np.where(vals > 0, vals / penalty, vals * penalty)
    return out


class Sampler:
    """Draws token ids with one seeded random generator per generation call."""

    def __init__(self, config: GenerationConfig) -> None:
        import numpy as np

        from openllm_hub.core.constrain import mask_for

        self.config = config
        self._rng = np.random.default_rng(config.seed)
        self._mask = mask_for(config)

    def __call__(self, logits: npt.NDArray[np.float32], history: Sequence[int]) -> int:
        token = self._draw(logits, history)
        if self._mask is not None:
            self._mask.advance(token)
        return token

    def _draw(self, logits: npt.NDArray[np.float32], history: Sequence[int]) -> int:
        import numpy as np

        c = self.config
        row = np.asarray(logits, dtype=np.float32).reshape(-1)
        if self._mask is not None:
            row = row.copy()  # the engine's row stays raw (logprobs read it)
            self._mask.apply(row)
        row = apply_repeat_penalty(row, history, c.repeat_penalty, c.repeat_last_n)
        if c.greedy:
            return int(np.argmax(row))
        order = np.argsort(-row, kind="stable")
        if c.top_k > 0:
            order = order[: c.top_k]
        cand = row[order].astype(np.float64)
        probs = np.exp(cand - cand.max())
        probs /= probs.sum()
        if c.top_p < 1.0:
            cum = np.cumsum(probs)
            keep = int(np.searchsorted(cum, c.top_p) + 1)
            order, cand = order[:keep], cand[:keep]
        scaled = cand / c.temperature
        probs = np.exp(scaled - scaled.max())
        probs /= probs.sum()
        return int(order[int(self._rng.choice(len(order), p=probs))])
