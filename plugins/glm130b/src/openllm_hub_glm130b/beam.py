"""Beam search over any engine that can score a batch of continuations (numpy, no torch).

Like GLM-130B's ``BeamSearchStrategy`` but deterministic (top scores, not sampled candidates):

* a hypothesis' score is the sum of its tokens' log-probabilities; it is ranked by
  ``score / ((5 + n) / 6) ** length_penalty`` with ``n`` its generated length (end token
  included), the GNMT penalty GLM-130B uses (there ``n`` also counts the prompt);
* an end token finishes a hypothesis; ``min_new_tokens`` forbids end tokens before that
  length, and ``no_repeat_ngram_size`` forbids a token that would repeat an n-gram of the
  hypothesis' generated tokens; forbidden tokens are removed before the softmax, as there;
* at ``max_new_tokens`` unfinished hypotheses are ranked too (GLM-130B's ``consider_end``);
* the search stops early only when no live hypothesis can still beat the kept finished ones
  (an exact bound: log-probabilities are never positive).

With ``num_beams`` at least (non-end vocabulary) ** (max_new_tokens - 1) nothing is pruned and
the result is the exact best sequence; the tests check that by enumeration.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from openllm_hub.plugin import InvalidParameterError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import numpy.typing as npt


@dataclass(frozen=True)
class Beam:
    tokens: tuple[int, ...]
    score: float
    normalized: float
    finished: bool


def length_norm(n: int, length_penalty: float) -> float:
    return float(((5.0 + n) / 6.0) ** length_penalty)


def banned_tokens(tokens: Sequence[int], size: int) -> set[int]:
    """Tokens that would repeat an n-gram (of length ``size``) already in ``tokens``."""
    if size <= 0 or len(tokens) < size - 1:
        return set()
    prefix = tuple(tokens[len(tokens) - (size - 1):]) if size > 1 else ()
    out = set()
    for i in range(len(tokens) - size + 1):
        gram = tuple(tokens[i : i + size])
        if gram[:-1] == prefix:
            out.add(gram[-1])
    return out


def log_probs(row: npt.NDArray[np.float32], tokens: Sequence[int], end_ids: Sequence[int], min_new_tokens: int,
              no_repeat_ngram_size: int) -> npt.NDArray[np.float64]:
    """Log-softmax of one row of logits after removing the forbidden tokens."""
    import numpy as np

    x = np.asarray(row, dtype=np.float64).copy()
    if len(tokens) < min_new_tokens:
        x[list(end_ids)] = -np.inf
    ban = banned_tokens(tokens, no_repeat_ngram_size)
    if ban:
        x[list(ban)] = -np.inf
    top = np.max(x)
    if not np.isfinite(top):
        return x
    return np.asarray(x - top - np.log(np.sum(np.exp(x - top))), dtype=np.float64)


def check_params(num_beams: int, max_new_tokens: int, min_new_tokens: int, no_repeat_ngram_size: int) -> None:
    if num_beams < 1:
        raise InvalidParameterError("num_beams must be at least 1", where="beam search")
    if max_new_tokens < 1:
        raise InvalidParameterError("max_new_tokens must be at least 1", where="beam search")
    if min_new_tokens < 0 or no_repeat_ngram_size < 0:
        raise InvalidParameterError("min_new_tokens and no_repeat_ngram_size must not be negative",
                                    where="beam search")


def beam_search(first_logits: npt.NDArray[np.float32],
                step: Callable[[list[int], list[int]], npt.NDArray[np.float32]], *,
                num_beams: int, max_new_tokens: int, end_ids: Sequence[int], length_penalty: float = 1.0,
                no_repeat_ngram_size: int = 0, min_new_tokens: int = 0) -> list[Beam]:
    """Best hypotheses, best first.

    ``first_logits``: the prompt's last-position logits. ``step(source_rows, tokens)`` must
    rebuild the batch so that row i continues old row ``source_rows[i]`` with ``tokens[i]`` and
    return the new rows' last-position logits ``[len(tokens), V]``.
    """
    import numpy as np

    check_params(num_beams, max_new_tokens, min_new_tokens, no_repeat_ngram_size)
    ends = sorted(set(end_ids))
    alive: list[tuple[tuple[int, ...], float]] = [((), 0.0)]
    logits = np.asarray(first_logits, dtype=np.float32)[None, :]
    finished: list[Beam] = []

    def keep(beam: Beam) -> None:
        finished.append(beam)
        finished.sort(key=lambda b: -b.normalized)
        del finished[num_beams:]

    for t in range(max_new_tokens):
        n = t + 1
        norm = length_norm(n, length_penalty)
        rows = np.stack([log_probs(logits[b], toks, ends, min_new_tokens, no_repeat_ngram_size) + s
                         for b, (toks, s) in enumerate(alive)])  # [B, V]
        vocab = rows.shape[1]
        for b, (toks, _) in enumerate(alive):
            for e in ends:
                if np.isfinite(rows[b, e]):
                    keep(Beam((*toks, e), float(rows[b, e]), float(rows[b, e]) / norm, True))
        cont = rows.copy()
        cont[:, ends] = -np.inf
        flat = cont.reshape(-1)
        order = np.argsort(-flat, kind="stable")[:num_beams]
        order = order[np.isfinite(flat[order])]
        if t == max_new_tokens - 1:
            for idx in order:
                b, v = divmod(int(idx), vocab)
                keep(Beam((*alive[b][0], v), float(flat[idx]), float(flat[idx]) / norm, False))
            break
        if len(order) == 0:
            break
        picked = [divmod(int(idx), vocab) for idx in order]
        alive = [((*alive[b][0], v), float(rows[b, v])) for b, v in picked]
        if len(finished) >= num_beams:
            worst = finished[-1].normalized
            best_norm = max(length_norm(n + 1, length_penalty), length_norm(max_new_tokens, length_penalty))
            if all(s / best_norm < worst for _, s in alive):
                break
        logits = step([b for b, _ in picked], [v for _, v in picked])
    return finished
