"""The example plugin passes the conformance kit and is found through its entry point."""

from __future__ import annotations

import math

import numpy as np
from openllm_hub_bigram import BUILTIN_MODEL
from openllm_hub_bigram.engine_numpy import BOS, EOS, train
from openllm_hub_bigram.train import corpus

import openllm_hub
from openllm_hub.core.registry import get_registry
from openllm_hub.testing import ModelConformance


class TestBigramConformance(ModelConformance):
    def load_model(self) -> openllm_hub.Model:
        return openllm_hub.load(BUILTIN_MODEL, device="cpu")


def test_found_by_entry_point() -> None:
    assert "bigram" in get_registry().families
    assert get_registry().plugins["bigram"].distribution == "openllm-hub-bigram"


def test_builtin_name_and_detection() -> None:
    fam, det = openllm_hub.detect(BUILTIN_MODEL)
    assert (fam.name, det.format) == ("bigram", "bigram")
    with openllm_hub.load("bigram-stories") as m:
        assert m.info.path == str(BUILTIN_MODEL)


def test_shipped_model_is_trained_on_its_corpus() -> None:
    """The shipped table equals a fresh training run, and beats uniform perplexity by far."""
    fresh = train(corpus())
    with openllm_hub.load(BUILTIN_MODEL) as m:
        text = "Once upon a time, Lily had a little cat."
        ids = [*m.tokenize(text), EOS]
        rows = m.logits(ids[:-1])
        np.testing.assert_array_equal(rows, fresh[ids[:-1]])
        nll = -float(np.mean([rows[i, ids[i + 1]] for i in range(len(ids) - 1)]))
        # uniform over 257 predictable ids is ln(257) = 5.55 nats; trained bigrams on this
        # templated corpus sit near 1.5; 3.0 leaves room and still proves learning.
        assert nll < 3.0 < math.log(257)
        assert ids[0] == BOS
