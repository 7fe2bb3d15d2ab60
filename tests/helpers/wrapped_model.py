"""A real model under another declaration: the base of the tests' wrappers (paced, faulty, serial, unscored).

Test-only scaffolding (not shipped in the wheel; tests/conftest.py puts this folder on sys.path).
The wrapper is a :class:`~openllm_hub.core.model.Model` whose tokenizer, logits and token stream are
the wrapped model's own; a test subclass overrides ``_token_stream`` (to pause, fail, record) or a
class attribute such as ``sequence_interleaving``. No engine is mocked: every token comes from the
inner model.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import numpy.typing as npt

from openllm_hub.core.config import GenerationConfig
from openllm_hub.core.model import Model


class WrappedModel(Model):
    """``inner``'s engine, token for token, under this class's declarations."""

    def __init__(self, inner: Model) -> None:
        super().__init__(inner.info, eos_token_ids=inner.eos_token_ids)
        self.inner = inner

    def _tokenize(self, text: str, add_special: bool) -> list[int]:
        return self.inner._tokenize(text, add_special)

    def _detokenize(self, ids: Sequence[int]) -> str:
        return self.inner._detokenize(ids)

    def _logits(self, ids: list[int]) -> npt.NDArray[np.float32]:
        return self.inner._logits(ids)

    def _token_stream(self, prompt_ids: list[int], config: GenerationConfig) -> Iterator[int]:
        return self.inner._token_stream(prompt_ids, config)
