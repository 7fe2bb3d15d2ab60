from __future__ import annotations

import math

import numpy as np
import pytest

from openllm_hub.core.perplexity import perplexity
from openllm_hub.errors import InvalidParameterError


def test_sliding_window_scores_each_token_once(bigram: object) -> None:
    from openllm_hub import Model

    assert isinstance(bigram, Model)
    text = "Once upon a time, Tom had a little dog. They went to the park. " * 3
    ids = bigram.tokenize(text)
    rows = bigram.logits(ids).astype(np.float64)
    logz = np.log(np.exp(rows).sum(-1))
    nll = float(np.mean([logz[i] - rows[i, ids[i + 1]] for i in range(len(ids) - 1)]))
    # a bigram sees one id of context, so any window gives the exact full-text value
    for window, stride in ((len(ids), None), (16, 8), (16, 15), (7, 3)):
        r = perplexity(bigram, text, window=window, stride=stride)
        assert r.tokens_scored == len(ids) - 1
        assert r.perplexity == pytest.approx(math.exp(nll), rel=1e-9)


def test_bad_window(bigram: object) -> None:
    from openllm_hub import Model

    assert isinstance(bigram, Model)
    with pytest.raises(InvalidParameterError):
        perplexity(bigram, "abc", window=1)
    with pytest.raises(InvalidParameterError, match="overlap"):
        perplexity(bigram, "abc", window=8, stride=8)
