"""The two engines on the same weights: llama.cpp (GGUF converted by our converter) against
transformers (the HF folder it came from), both through ``openllm_hub.load``.

transformers is the independent reference: equal token ids, logits within a tight bound,
identical greedy text, and the sampling parameters (repeat penalty and its window, top-k,
top-p) meaning the same thing on both sides.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

import openllm_hub
from openllm_hub.core.convert import VERIFY_PROMPT
from openllm_hub.core.model import Model

#: Tiny LLaMA variants: grouped-query attention; multi-head with tied embeddings and a
#: non-default rope theta (Llama-3's 500000).
CONFIGS: dict[str, dict[str, object]] = {
    "gqa": {"num_kv_heads": 2},
    "mha-tied-theta": {"tie_word_embeddings": True, "rope_theta": 500000.0},
}

#: Max |logit difference| relative to the reference's logit range, for F32 weights with an
#: F32 KV cache. Both sides compute in float32 and differ only in summation order (ggml's
#: blocked dot products vs torch's GEMM): measured 1.3e-6 (gqa) and 2.3e-6 (mha-tied-theta)
#: on these models, i.e. a few float32 ulps of logits of magnitude ~15. 2e-5 leaves ~10x
#: headroom and is still far below what a real bug produces (a wrong rope theta, q/k
#: permutation or norm epsilon moves logits by >1e-1 of the range).
LOGIT_BOUND = 2e-5

TEXTS = (
    VERIFY_PROMPT,
    "中文测试：你好，世界！ 🦙🚀",
    "   leading spaces and\n\nnewlines\t\ttabs",
    "def f(x):\n    return x ** 2  # code",
)


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def pair(request: pytest.FixtureRequest, tiny_hf_factory: Callable[..., Path],
         tiny_gguf_factory: Callable[..., Path]) -> Iterator[tuple[Model, Model]]:
    """(llama.cpp model, transformers model) on the same tiny weights."""
    kw = CONFIGS[request.param]
    gg = openllm_hub.load(tiny_gguf_factory("f32", **kw), device="cpu", threads=1, kv_cache_type="f32")
    hf = openllm_hub.load(tiny_hf_factory(**kw), device="cpu", threads=1)
    assert gg.info.engine == "llama.cpp" and hf.info.engine == "transformers"
    yield gg, hf
    gg.close()
    hf.close()


def test_same_token_ids(pair: tuple[Model, Model]) -> None:
    gg, hf = pair
    for text in TEXTS:
        assert gg.tokenize(text) == hf.tokenize(text), text
        assert gg.tokenize(text, add_special=False) == hf.tokenize(text, add_special=False), text


def test_logits_match(pair: tuple[Model, Model]) -> None:
    gg, hf = pair
    for text in TEXTS:
        ids = hf.tokenize(text)
        ref = hf.logits(ids).astype(np.float64)
        got = gg.logits(ids).astype(np.float64)
        assert got.shape == ref.shape == (len(ids), 32000)
        scale = float(ref.max() - ref.min())
        assert scale > 5.0, "tiny weights must give peaked logits, or agreement proves little"
        rel = float(np.abs(got - ref).max()) / scale
        assert rel < LOGIT_BOUND, f"{text!r}: max diff {rel:.2e} of the logit range"
        assert (got.argmax(-1) == ref.argmax(-1)).all()


def test_greedy_32_tokens_identical(pair: tuple[Model, Model]) -> None:
    gg, hf = pair
    params = {"max_new_tokens": 32, "temperature": 0.0, "repeat_penalty": 1.0}
    a = gg.generate(VERIFY_PROMPT, **params)
    b = hf.generate(VERIFY_PROMPT, **params)
    assert a.token_ids == b.token_ids
    assert a.text == b.text
    assert len(a.token_ids) == 32 or a.finish_reason == "stop"


def test_repeat_penalty_and_window_mean_the_same(pair: tuple[Model, Model]) -> None:
    """llama.cpp's penalties sampler (fed the prompt, as llama.cpp's CLI does) against the
    core's numpy sampler: the same greedy path for several penalties and windows. A penalty
    below 1 *boosts* the tokens in the window (positive logits are divided by it), so the
    window's extent decides the output: a wrong window or a window that ignores the prompt
    gives different text."""
    gg, hf = pair
    outs = {}
    for penalty, window in ((1.0, 64), (0.2, 1), (0.2, 4), (0.2, 16), (1.3, 64), (3.0, 8)):
        params = {"max_new_tokens": 24, "temperature": 0.0, "repeat_penalty": penalty, "repeat_last_n": window}
        a = gg.generate(VERIFY_PROMPT, **params).token_ids
        b = hf.generate(VERIFY_PROMPT, **params).token_ids
        assert a == b, f"penalty {penalty} window {window}"
        outs[(penalty, window)] = a
    assert len({outs[(1.0, 64)], outs[(0.2, 1)], outs[(0.2, 4)], outs[(0.2, 16)]}) == 4, \
        "the penalty window did not change the output"
    prompt_ids = set(hf.tokenize(VERIFY_PROMPT))
    assert prompt_ids & set(outs[(0.2, 16)]), "a window over the prompt should boost prompt tokens"


def test_top_k_and_top_p_truncate_like_the_core(pair: tuple[Model, Model]) -> None:
    """top_k=1, or a top_p smaller than the best token's probability, leaves one candidate:
    sampling at any temperature and seed must then be the greedy path, on both engines."""
    gg, hf = pair
    greedy = hf.generate(VERIFY_PROMPT, max_new_tokens=12, temperature=0.0).token_ids
    for model in (gg, hf):
        for seed in (1, 2):
            k1 = model.generate(VERIFY_PROMPT, max_new_tokens=12, temperature=1.5, top_k=1, seed=seed)
            p0 = model.generate(VERIFY_PROMPT, max_new_tokens=12, temperature=1.5, top_k=0, top_p=1e-6, seed=seed)
            assert k1.token_ids == greedy and p0.token_ids == greedy


def _collapse_fffd(text: str) -> str:
    return re.sub("\ufffd+", "\ufffd", text)


def test_detokenize_identical_and_like_sentencepiece(pair: tuple[Model, Model], tokenizer_model: Path) -> None:
    """The GGUF engine joins llama.cpp's pieces, the transformers engine sentencepiece's: the
    same text for any ids. Against sentencepiece's own decode (with <unk> dropped, as special
    tokens are): equal, except that sentencepiece writes one U+FFFD per stray byte where
    Python's ``errors="replace"`` writes one per broken sequence."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_model))
    gg, hf = pair
    rng = random.Random(0)
    cases: list[list[int]] = [[], [1], [1, 2], [0, 1, 2, 3], [29871], [1, 29871, 13], [35], [35, 15043],
                              [15043, 35], [29871, 15043], [2, 15043], [0, 15043], [1, 35, 15043]]
    for _ in range(300):
        n = rng.randrange(1, 9)
        pool = rng.choice((range(3, 259), range(0, 32000), range(259, 32000)))  # bytes, anything, pieces
        cases.append([rng.choice(pool) for _ in range(n)])
    for text in TEXTS:
        cases.append(hf.tokenize(text))
    for ids in cases:
        text = gg.detokenize(ids)
        assert text == hf.detokenize(ids), ids
        reference = sp.decode([i for i in ids if i != sp.unk_id()])
        assert _collapse_fffd(text) == _collapse_fffd(reference), ids


def test_stop_strings_and_max_new_tokens_cut_the_same(pair: tuple[Model, Model]) -> None:
    gg, hf = pair
    full = hf.generate(VERIFY_PROMPT, max_new_tokens=20, temperature=0.0)
    stop = full.text[len(full.text) // 2 :][:3]
    assert stop.strip(), f"unusable stop string from {full.text!r}"
    for n in (1, 7):
        a = gg.generate(VERIFY_PROMPT, max_new_tokens=n, temperature=0.0)
        b = hf.generate(VERIFY_PROMPT, max_new_tokens=n, temperature=0.0)
        assert a.token_ids == b.token_ids and len(a.token_ids) == n and a.finish_reason == "length"
    a = gg.generate(VERIFY_PROMPT, max_new_tokens=20, temperature=0.0, stop=[stop])
    b = hf.generate(VERIFY_PROMPT, max_new_tokens=20, temperature=0.0, stop=[stop])
    assert a.text == b.text == full.text[: full.text.find(stop)]
    assert a.finish_reason == b.finish_reason == "stop"
