"""ChatRWKV's repetition penalties (presence + frequency, decaying) and how the SDK's
``repeat_penalty`` maps onto them.

ChatRWKV (``rwkv.utils.PIPELINE.generate``) does not divide logits like CTRL/llama.cpp. It
keeps an occurrence count per generated token and, before each draw, subtracts
``alpha_presence + alpha_frequency * count`` from the logit of every token seen so far. After
each draw every count is multiplied by ``alpha_decay`` (so old tokens fade: 0.996 halves a
count in ~173 tokens), then the new token's count grows by 1, or by 0 when the token's text is
a substring of ``" \\t0123456789"`` (spaces and digits repeat legitimately). Only generated
tokens count, not the prompt.

Mapping from :class:`~openllm_hub.core.config.GenerationConfig` (``repeat_mode='rwkv'``, the
default of this plugin): ``alpha_presence`` and ``alpha_frequency`` default to
``ln(repeat_penalty)``. Subtracting ``ln(p)`` from a logit divides that token's probability
weight by exactly ``p``, which is what a repeat penalty of ``p`` means for a token seen once;
repeated tokens are penalised further through the frequency term, as in ChatRWKV. So
``repeat_penalty=1.0`` (or ``repeat_last_n=0``) turns the penalties off, and ChatRWKV's
defaults 0.2/0.2 correspond to ``repeat_penalty`` of about 1.22. ``repeat_last_n`` plays no
other part: the decay is the window. Explicit ``alpha_presence``/``alpha_frequency`` load
options override the mapping. With ``repeat_mode='ctrl'`` the core sampler's CTRL penalty is
used instead, as in the other families.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from openllm_hub.plugin import GenerationConfig

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import numpy.typing as npt

#: Token texts that ChatRWKV counts with weight 0 (substring test, as in the package).
ZERO_WEIGHT_TEXT = " \t0123456789"


@dataclass(frozen=True)
class RwkvPenalty:
    """Presence/frequency penalty with decay, in ChatRWKV's terms."""

    presence: float
    frequency: float
    decay: float

    @property
    def active(self) -> bool:
        return self.presence != 0.0 or self.frequency != 0.0

    @classmethod
    def from_config(cls, config: GenerationConfig, *, presence: float | None, frequency: float | None,
                    decay: float) -> RwkvPenalty:
        """Map ``config.repeat_penalty`` (see the module docstring); explicit values win."""
        mapped = 0.0 if config.repeat_last_n == 0 else math.log(config.repeat_penalty)
        return cls(presence=mapped if presence is None else presence,
                   frequency=mapped if frequency is None else frequency, decay=decay)


class PenaltyTracker:
    """Occurrence counts of the tokens generated so far, applied to each row of logits."""

    def __init__(self, penalty: RwkvPenalty, token_text: Callable[[Sequence[int]], str]) -> None:
        self.penalty = penalty
        self._text = token_text
        self.occurrence: dict[int, float] = {}

    def add(self, token: int) -> None:
        """Record a drawn token: decay every count, then count the token (0 for spaces/digits)."""
        if not self.penalty.active:
            return
        decay = self.penalty.decay
        for t in self.occurrence:
            self.occurrence[t] *= decay
        weight = 0.0 if self._text([token]) in ZERO_WEIGHT_TEXT else 1.0
        self.occurrence[token] = self.occurrence.get(token, 0.0) + weight

    def apply(self, logits: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Subtract ``presence + frequency * count`` from the logit of every seen token."""
        if not self.occurrence:
            return logits
        import numpy as np

        ids = np.fromiter(self.occurrence.keys(), dtype=np.int64, count=len(self.occurrence))
        counts = np.fromiter(self.occurrence.values(), dtype=np.float64, count=len(self.occurrence))
        out = logits.copy()
        out[ids] = (out[ids] - (self.penalty.presence + counts * self.penalty.frequency)).astype(out.dtype)
        return out
