"""The KV-cache generation loop shared by engines that compute one step at a time.

An engine supplies ``step(new_ids) -> logits of the last position`` that appends ``new_ids``
to its own cache; this loop feeds the prompt once, then one sampled token per step. It knows
nothing of torch, so it serves the torch engines and numpy ones alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from openllm_hub.core.config import GenerationConfig
from openllm_hub.core.logprobs import score
from openllm_hub.core.sampling import Sampler

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import numpy.typing as npt

StepFn = Callable[[Sequence[int]], "npt.NDArray[np.float32]"]


def generate_tokens(
    step: StepFn,
    prompt_ids: Sequence[int],
    config: GenerationConfig,
    *,
    context_length: int | None = None,
    prompt_chunk: int = 512,
    raw_logits: Callable[[], npt.NDArray[np.float32]] | None = None,
    cached: int = 0,
) -> Iterator[int]:
    """Yield sampled ids until the caller stops iterating or the context is full.

    The prompt is fed in chunks of ``prompt_chunk`` ids. End-of-sequence and stop strings
    are the caller's business (see :class:`openllm_hub.core.model.Model`). With
    ``config.wants_logprobs`` each id is a :class:`~openllm_hub.core.logprobs.ScoredToken`
    scored against the logits ``step`` returned for its position; an engine whose ``step``
    returns logits it already adjusted (its own penalty) passes ``raw_logits``, giving the
    model's unadjusted row of the last step, so logprobs stay those of the raw logits.

    ``cached``: how many leading prompt ids ``step``'s cache holds already (a prefix restored
    from a prefix cache); only the rest is fed, and at least the last id must be (its logits
    are the first token's).
    """
    if not prompt_ids:
        raise ValueError("generation needs at least one prompt id (e.g. BOS)")
    if not 0 <= cached < len(prompt_ids):
        raise ValueError(f"{cached} cached ids of a {len(prompt_ids)}-id prompt: the last one must be fed")
    sample = Sampler(config.with_seed())
    history = list(prompt_ids)
    logits = None
    for start in range(cached, len(prompt_ids), prompt_chunk):
        logits = step(prompt_ids[start : start + prompt_chunk])
    assert logits is not None
    scored, top_k = config.wants_logprobs, config.top_logprobs
    while context_length is None or len(history) < context_length:
        token = sample(logits, history)
        history.append(token)
        if scored:
            yield score(logits if raw_logits is None else raw_logits(), token, top_k)
        else:
            yield token
        if context_length is not None and len(history) >= context_length:
            return
        logits = step([token])
