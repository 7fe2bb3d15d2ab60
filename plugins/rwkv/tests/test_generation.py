"""Generation: ChatRWKV's penalties as the SDK maps them, checked against the package's own
``PIPELINE.generate``; the CTRL alternative; seeds."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from openllm_hub_rwkv.penalties import RwkvPenalty

import openllm_hub
from openllm_hub.core.config import GenerationConfig
from openllm_hub.core.sampling import apply_repeat_penalty


class _WorldForPipeline:
    """The World tokenizer for PIPELINE. The package's own TRIE_TOKENIZER builds ~500k objects
    in reference cycles, which makes every later gc.collect() (the package calls it while
    loading) take seconds; test_tokenizer checks that ours gives the same ids as it."""

    def __init__(self) -> None:
        from openllm_hub_rwkv.tokenizer import world_tokenizer

        self._tok = world_tokenizer()

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids)


def _pipeline_greedy(model: Any, tokenizer: str, prompt: str, n: int, presence: float, frequency: float,
                     decay: float) -> list[int]:
    """Greedy decoding by rwkv.utils.PIPELINE.generate (temperature 0 = argmax in its sampler)."""
    from rwkv.utils import PIPELINE, PIPELINE_ARGS

    if tokenizer == "world":
        pipe = PIPELINE.__new__(PIPELINE)
        pipe.model, pipe.tokenizer = model, _WorldForPipeline()
    else:
        pipe = PIPELINE(model, tokenizer)
    tokens: list[int] = []
    original = pipe.sample_logits

    def record(logits: Any, **kw: Any) -> int:
        token = original(logits, **kw)
        tokens.append(token)
        return token

    pipe.sample_logits = record  # type: ignore[method-assign]
    args = PIPELINE_ARGS(temperature=0.0, top_p=0.0, top_k=0, alpha_presence=presence, alpha_frequency=frequency,
                         alpha_decay=decay, chunk_len=256)
    pipe.generate(prompt, token_count=n, args=args)
    return tokens


@pytest.mark.parametrize(("version", "tokenizer", "p"), [("4", "json", 4.0), ("5.2", "world", 0.02)])
def test_penalties_equal_chatrwkv_pipeline(version: str, tokenizer: str, p: float, ckpt: dict[str, Path],
                                           shared_model: Callable[..., Any], bpe_json: Path, pkg: Any) -> None:
    """repeat_penalty=p maps to alpha_presence = alpha_frequency = ln(p) with decay 0.996: the
    SDK's greedy tokens equal PIPELINE.generate's with those penalties. (p < 1 rewards repeats, ln(0.02) = -3.9:
    a random model with the 65536-token World vocabulary hardly repeats on its own, so the
    test makes the penalty visible that way.)"""
    m = shared_model(version)
    prompt, n = "The quick brown fox", 24
    ref = _pipeline_greedy(pkg.model(ckpt[version], version), str(bpe_json) if tokenizer == "json" else "world",
                           prompt, n, math.log(p), math.log(p), 0.996)
    ours = m.generate(prompt, max_new_tokens=n, temperature=0.0, repeat_penalty=p).token_ids
    if 0 in ref:  # the SDK stops at end-of-text (id 0); PIPELINE goes on
        ref = ref[: ref.index(0)]
    assert list(ours) == ref
    # and the penalties matter: without them the greedy tokens differ
    plain = m.generate(prompt, max_new_tokens=n, temperature=0.0, repeat_penalty=1.0).token_ids
    assert plain != ours


def test_explicit_alphas_override_mapping(ckpt: dict[str, Path], bpe_json: Path, pkg: Any) -> None:
    with openllm_hub.load(ckpt["4"], device="cpu", alpha_presence=0.0, alpha_frequency=1.0,
                          alpha_decay=0.9) as m:
        ref = _pipeline_greedy(pkg.model(ckpt["4"], "4"), str(bpe_json), "Hello", 16, 0.0, 1.0, 0.9)
        ours = m.generate("Hello", max_new_tokens=16, temperature=0.0, repeat_penalty=1.3).token_ids
        assert list(ours) == (ref[: ref.index(0)] if 0 in ref else ref)


def test_penalty_mapping_values() -> None:
    cfg = GenerationConfig(repeat_penalty=1.2)
    pen = RwkvPenalty.from_config(cfg, presence=None, frequency=None, decay=0.996)
    assert pen.presence == pen.frequency == pytest.approx(math.log(1.2))
    assert not RwkvPenalty.from_config(GenerationConfig(repeat_penalty=1.0), presence=None, frequency=None,
                                       decay=0.996).active
    assert not RwkvPenalty.from_config(GenerationConfig(repeat_penalty=1.5, repeat_last_n=0), presence=None,
                                       frequency=None, decay=0.996).active


def test_ctrl_mode_uses_core_penalty(ckpt: dict[str, Path], pkg: Any) -> None:
    """repeat_mode='ctrl': greedy = argmax after the core's CTRL penalty over the package's logits."""
    with openllm_hub.load(ckpt["6"], device="cpu", repeat_mode="ctrl") as m:
        prompt, n = "Once upon a time", 12
        ours = m.generate(prompt, max_new_tokens=n, temperature=0.0, repeat_penalty=1.5, repeat_last_n=8).token_ids
        ref_model = pkg.model(ckpt["6"], "6")
        history = m.tokenize(prompt)
        out, state = ref_model.forward(history, None)
        expected: list[int] = []
        for _ in range(n):
            row = apply_repeat_penalty(out.float().numpy(), history, 1.5, 8)
            token = int(np.argmax(row))
            if token == 0:
                break
            expected.append(token)
            history.append(token)
            out, state = ref_model.forward([token], state)
        assert list(ours) == expected


def test_seeded_sampling_with_penalties(shared_model: Callable[..., Any]) -> None:
    m = shared_model("7")
    a = m.generate("Hi", max_new_tokens=16, temperature=1.0, top_k=0, top_p=1.0, seed=11, repeat_penalty=1.3)
    b = m.generate("Hi", max_new_tokens=16, temperature=1.0, top_k=0, top_p=1.0, seed=11, repeat_penalty=1.3)
    c = m.generate("Hi", max_new_tokens=16, temperature=1.0, top_k=0, top_p=1.0, seed=12, repeat_penalty=1.3)
    assert a.token_ids == b.token_ids and a.token_ids != c.token_ids
