"""Log-probabilities of generated tokens (``logprobs`` / ``top_logprobs``), the same for every engine.

What is scored: the log-softmax of the model's **raw** logits at the position that produced
the token, i.e. row ``i`` of ``Model.logits(prompt + generated[:i])``, *before* temperature,
top-k, top-p and the repeat penalty. The reported number is therefore the model's own
probability of the token, not the probability the sampler drew it with (OpenAI and
llama-cpp-python report the same), and it does not change with the sampling parameters.

An engine's generation loop scores a token with :func:`score` when the config asks for it
(:func:`~openllm_hub.core.generate.generate_tokens` does, so every engine on the core loop
gets it; llama.cpp scores the row its context computed). :func:`score` returns a
:class:`ScoredToken`: an ``int`` (the id, so every consumer of the token stream is unchanged)
that also carries the numbers. :class:`~openllm_hub.core.batch.SequenceOutput` turns them
into :class:`TokenLogprob` (with the token's text and bytes) in each chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import numpy.typing as npt

#: The most alternatives per token (OpenAI's limit for ``top_logprobs``).
MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True)
class TopLogprob:
    """One alternative at a position: a token and its log-probability."""

    token_id: int
    token: str
    bytes: bytes
    logprob: float


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability and the ``top`` most likely tokens at its position
    (most likely first; empty unless ``top_logprobs`` was asked for)."""

    token_id: int
    token: str
    bytes: bytes
    logprob: float
    top: tuple[TopLogprob, ...] = ()


class ScoredToken(int):
    """A sampled token id carrying its log-probability and the top alternatives
    (``(id, logprob)`` pairs), as the token stream of an engine yields it."""

    logprob: float
    top: tuple[tuple[int, float], ...]

    def __new__(cls, token: int, logprob: float, top: tuple[tuple[int, float], ...]) -> ScoredToken:
        obj = super().__new__(cls, token)
        obj.logprob = logprob
        obj.top = top
        return obj

    def __reduce__(self) -> tuple[type[ScoredToken], tuple[int, float, tuple[tuple[int, float], ...]]]:
        return (ScoredToken, (int(self), self.logprob, self.top))


def log_softmax(logits: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """``log_softmax`` of one row of logits, in float64 (stable: the maximum is subtracted)."""
    import numpy as np

    row = np.asarray(logits, dtype=np.float64)
    shifted = row - row.max()
    result: npt.NDArray[np.float64] = shifted - np.log(np.exp(shifted).sum())
    return result


def score(logits: npt.NDArray[np.floating], token: int, top_k: int) -> ScoredToken:
    """``token`` scored against one row of raw logits, with the ``top_k`` most likely ids
    (ties: lower id first). O(vocabulary) numpy, run only when logprobs are asked for."""
    import numpy as np

    lp = log_softmax(logits)
    top: tuple[tuple[int, float], ...] = ()
    if top_k > 0:
        k = min(top_k, lp.shape[0])
        kth = np.partition(lp, lp.shape[0] - k)[lp.shape[0] - k]  # the k-th largest value
        cand = np.flatnonzero(lp >= kth)  # every id tied with it too, in id order
        order = cand[np.argsort(-lp[cand], kind="stable")][:k]
        top = tuple((int(i), float(lp[i])) for i in order)
    return ScoredToken(int(token), float(lp[int(token)]), top)


def token_text(raw: bytes) -> str:
    """A token's text for display: its bytes as UTF-8 (a piece of a multi-byte character shows
    as U+FFFD; the bytes keep the exact value)."""
    return raw.decode("utf-8", errors="replace")


__all__ = ["MAX_TOP_LOGPROBS", "ScoredToken", "TokenLogprob", "TopLogprob", "log_softmax", "score", "token_text"]
