"""Logprobs on RWKV score the raw logits (what ``Model.logits`` gives), not the row the engine's own
ChatRWKV-style penalty adjusted before sampling."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import openllm_hub


def test_logprobs_are_of_the_raw_logits_under_the_rwkv_penalty(ckpt: dict[str, Path]) -> None:
    # a strong penalty (3.0 per seen token) so that scoring the penalized row could not pass
    with openllm_hub.load(ckpt["6"], device="cpu", alpha_presence=3.0, alpha_frequency=3.0) as m:
        assert m.options.repeat_mode == "rwkv"  # type: ignore[attr-defined]
        done = m.generate("Hello there", max_new_tokens=8, temperature=0.0, logprobs=True, repeat_penalty=1.3)
        ids = m.tokenize("Hello there") + list(done.token_ids)
        logits = np.asarray(m.logits(ids), dtype=np.float64)
    top = logits.max(-1, keepdims=True)
    lp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    start = len(ids) - len(done.token_ids) - 1
    assert done.logprobs is not None and len(done.logprobs) == len(done.token_ids)
    # bound: the cached step-by-step state vs Model.logits' chunked pass differ by fp32 rounding
    # (measured 1.1e-6); scoring the penalized row instead was measured 2.9e-4 away
    worst = max(abs(t.logprob - lp[start + i, t.token_id]) for i, t in enumerate(done.logprobs))
    assert worst < 5e-5, worst
