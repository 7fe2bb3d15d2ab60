"""The shared sampler against direct computations of each step."""

from __future__ import annotations

import numpy as np

from openllm_hub import GenerationConfig
from openllm_hub.core.sampling import Sampler, apply_repeat_penalty


def test_repeat_penalty_matches_llama_cpp_rule() -> None:
    logits = np.array([2.0, -2.0, 1.0, 0.5], dtype=np.float32)
    out = apply_repeat_penalty(logits, [0, 1, 3, 3], penalty=2.0, last_n=3)
    # window = last 3 ids = {1, 3}: positive logits divided, negative multiplied
    np.testing.assert_allclose(out, [2.0, -4.0, 1.0, 0.25])


def test_greedy_is_argmax_after_penalty() -> None:
    s = Sampler(GenerationConfig.build(temperature=0, repeat_penalty=4.0, repeat_last_n=8))
    logits = np.array([3.0, 2.0, 0.0], dtype=np.float32)
    assert s(logits, []) == 0
    assert s(logits, [0]) == 1  # 3/4 < 2


def test_top_k_and_top_p_restrict_support() -> None:
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    s = Sampler(GenerationConfig.build(temperature=1.0, top_k=2, top_p=1.0, repeat_penalty=1.0, seed=1))
    assert {s(logits, []) for _ in range(300)} == {0, 1}
    s = Sampler(GenerationConfig.build(temperature=1.0, top_k=0, top_p=0.7, repeat_penalty=1.0, seed=1))
    # cumulative 0.5, 0.8 -> the nucleus for 0.7 holds ids 0 and 1
    assert {s(logits, []) for _ in range(300)} == {0, 1}


def test_frequencies_follow_the_distribution() -> None:
    p = np.array([0.6, 0.3, 0.1])
    s = Sampler(GenerationConfig.build(temperature=1.0, top_k=0, top_p=1.0, repeat_penalty=1.0, seed=123))
    draws = np.bincount([s(np.log(p), []) for _ in range(20000)], minlength=3) / 20000
    # 20k draws: standard error <= sqrt(.25/20000) = 0.0035; 0.02 is > 5 sigma
    np.testing.assert_allclose(draws, p, atol=0.02)


def test_seeded() -> None:
    cfg = GenerationConfig.build(temperature=1.0, seed=99)
    logits = np.zeros(50, dtype=np.float32)
    a, b = Sampler(cfg), Sampler(cfg)
    assert [a(logits, []) for _ in range(20)] == [b(logits, []) for _ in range(20)]
