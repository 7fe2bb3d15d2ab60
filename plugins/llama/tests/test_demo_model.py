"""The shipped demo models (``demo``, ``demo-chat``): they load by name from a clean cache, on
llama.cpp (converted to GGUF by the SDK on first use) and on transformers, they have learnt
their corpus (held-out perplexity far below chance), they write fluent, on-topic text in
both languages, and their llama.cpp quantizations load, generate and keep their perplexity.

"Fluent and on-topic" is judged against the training corpus, not against remembered outputs:
a continuation must be long, made of the corpus's words (English) or characters (Chinese),
and name a character the way the stories do.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from openllm_hub_llama.demo import DEMO_DIR, MODEL_NAMES, _checked
from openllm_hub_llama.demo_train import corpus, lexicon

import openllm_hub
from openllm_hub.api import resolve_source
from openllm_hub.core.perplexity import perplexity
from openllm_hub.errors import NotFoundError

MB = 1_000_000
#: Uniform guessing over the 3,072-piece vocabulary has perplexity 3072. The shipped model must
#: be below 10 on held-out stories: under 1/300 of chance (the run measured ~3, see MODEL_CARD.md).
PPL_BOUND = 10.0


@pytest.fixture(scope="module")
def demo_corpus() -> corpus.Corpus:
    """The shipped model's own corpus (seed 0, default sizes): the held-out split it never saw."""
    return corpus.build_corpus(0)


@pytest.fixture(scope="module")
def heldout_text(demo_corpus: corpus.Corpus) -> str:
    return "\n".join(demo_corpus.heldout[:30])


@pytest.fixture(scope="module")
def words_and_chars(demo_corpus: corpus.Corpus) -> tuple[set[str], set[str]]:
    words: set[str] = set()
    chars: set[str] = set()
    for doc in demo_corpus.train:
        words.update(_words(doc))
        chars.update(ch for ch in doc if _is_cjk(ch))
    return words, chars


@pytest.fixture()
def clean_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    cache = tmp_path / "cache"
    monkeypatch.setenv("OPENLLM_HUB_CACHE_DIR", str(cache))
    yield cache


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+(?:'[a-z]+)?", text.lower())


def _is_cjk(ch: str) -> bool:
    return "\u4e00" <= ch <= "\u9fff"


def assert_fluent_english(text: str, vocab: set[str], *, min_words: int = 25) -> None:
    words = _words(text)
    assert len(words) >= min_words, text
    known = sum(w in vocab for w in words) / len(words)
    # the corpus has ~600 distinct words; a model that learnt it rarely invents one (a
    # byte-level or sub-word slip shows as an unknown word), 95 % leaves room for one slip
    assert known >= 0.95, (known, text)
    names = {n.en for n in lexicon.NAMES_EN}
    assert names & set(re.findall(r"[A-Z][a-z]+", text)), f"no character is named: {text!r}"


def assert_fluent_chinese(text: str, chars: set[str], *, min_chars: int = 30) -> None:
    cjk = [ch for ch in text if _is_cjk(ch)]
    assert len(cjk) >= min_chars, text
    known = sum(ch in chars for ch in cjk) / len(cjk)
    assert known >= 0.97, (known, text)
    assert any(n.zh in text for n in lexicon.NAMES_ZH), f"no character is named: {text!r}"


# ---- the shipped files -----------------------------------------------------------------------------
def test_shipped_folders_are_complete_and_small() -> None:
    total = 0
    for folder in (DEMO_DIR,):  # demo-chat is not shipped yet (see MODEL_NAMES)
        for name in ("config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json",
                     "MODEL_CARD.md"):
            assert (folder / name).is_file(), folder / name
        total += sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    assert total <= 20 * MB  # both models together, weights, tokenizers and cards
    cfg = json.loads((DEMO_DIR / "config.json").read_text())
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(DEMO_DIR / "tokenizer.model"))
    assert cfg["vocab_size"] == sp.get_piece_size()
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id()) == (0, 1, 2)
    assert cfg["hidden_size"] % 256 == 0 and cfg["intermediate_size"] % 256 == 0  # k-quants apply everywhere


def test_model_card_reports_the_run() -> None:
    info = json.loads((DEMO_DIR / "training.json").read_text())
    card = (DEMO_DIR / "MODEL_CARD.md").read_text()
    res = info["result"]
    for value in (f"{res['final_loss']:.4f}", f"{res['heldout_perplexity']:.3f}", f"{res['steps']}",
                  f"{res['train_tokens']:,}"):
        assert value in card, value
    assert res["heldout_perplexity"] < PPL_BOUND


def test_model_names_resolve_to_the_shipped_folders(tmp_path: Path) -> None:
    demo = resolve_source("demo")
    assert demo.path == DEMO_DIR and demo.family == "llama"
    assert demo.options == {"engine": "llama.cpp"}
    assert {m.name for m in MODEL_NAMES} == {"demo"}
    with pytest.raises(NotFoundError) as err:
        _checked(tmp_path, "demo")  # an incomplete install says what is missing and how to rebuild
    assert "model.safetensors" in str(err.value) and "demo_train" in str(err.value)


# ---- quality ------------------------------------------------------------------------------------------
def test_heldout_perplexity_on_transformers(heldout_text: str) -> None:
    with openllm_hub.load("demo", engine="transformers", device="cpu") as model:
        assert model.info.engine == "transformers"
        r = perplexity(model, heldout_text, window=512, stride=256, progress=False)
        vocab = json.loads((DEMO_DIR / "config.json").read_text())["vocab_size"]
    assert r.tokens_scored > 2000
    assert r.perplexity < PPL_BOUND < vocab / 300


def test_load_demo_from_a_clean_cache_runs_llama_cpp(clean_cache: Path, heldout_text: str,
                                                     words_and_chars: tuple[set[str], set[str]]) -> None:
    vocab, chars = words_and_chars
    with openllm_hub.load("demo") as model:
        assert model.info.engine == "llama.cpp" and model.info.format == "gguf"
        made = sorted(clean_cache.rglob("*.gguf"))
        assert len(made) == 1 and made[0].stat().st_size < 10 * MB  # the f16 conversion, in the cache
        en = model.generate("Once upon a time", max_new_tokens=60, temperature=0).text
        zh = model.generate("从前", max_new_tokens=60, temperature=0).text
        sampled = model.generate("Once upon a time", max_new_tokens=60, temperature=0.7, seed=42).text
    assert_fluent_english("Once upon a time" + en, vocab)
    assert_fluent_english("Once upon a time" + sampled, vocab)
    assert_fluent_chinese("从前" + zh, chars)
    stamp = made[0].stat().st_mtime_ns
    with openllm_hub.load("demo") as again:  # the second load reuses the cached file
        r = perplexity(again, heldout_text, window=512, stride=256, progress=False)
    assert sorted(clean_cache.rglob("*.gguf")) == made and made[0].stat().st_mtime_ns == stamp
    assert r.perplexity < PPL_BOUND


def test_transformers_engine_writes_fluent_stories(words_and_chars: tuple[set[str], set[str]]) -> None:
    vocab, chars = words_and_chars
    with openllm_hub.load("demo", engine="transformers", device="cpu") as model:
        en = model.generate("Once upon a time", max_new_tokens=60, temperature=0).text
        zh = model.generate("从前", max_new_tokens=60, temperature=0).text
    assert_fluent_english("Once upon a time" + en, vocab)
    assert_fluent_chinese("从前" + zh, chars)


# ---- quantized variants ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("demo-quant")
    files = {"f16": openllm_hub.convert(DEMO_DIR, out / "demo-f16.gguf", to="gguf", outtype="f16",
                                        progress=False).path}
    for scheme in ("q8_0", "q5_1", "q4_K_M", "q4_0"):
        files[scheme] = openllm_hub.quantize(files["f16"], out / f"demo-{scheme}.gguf", scheme, progress=False)
    return files


#: Held-out perplexity of a quantization relative to f16, at most. q8_0: 1 % (the issue's bar;
#: 8-bit blocks lose ~0.1 %). 5- and 4-bit schemes on a 4 M-parameter model lose more; the
#: bounds are ~2x what the committed model measured (benchmarks/RESULTS.md, Demo model).
QUANT_BOUNDS = {"q8_0": 1.01, "q5_1": 1.06, "q4_K_M": 1.10, "q4_0": 1.25}


def test_quantized_variants_load_generate_and_keep_perplexity(
        quantized: dict[str, Path], heldout_text: str, words_and_chars: tuple[set[str], set[str]]) -> None:
    vocab, _ = words_and_chars
    text = heldout_text[: len(heldout_text) // 2]
    ppl: dict[str, float] = {}
    for scheme, path in quantized.items():
        assert path.stat().st_size < quantized["f16"].stat().st_size or scheme == "f16"
        with openllm_hub.load(path, n_ctx=512) as model:
            ppl[scheme] = perplexity(model, text, window=512, stride=256, progress=False).perplexity
            story = model.generate("Once upon a time", max_new_tokens=48, temperature=0).text
        assert_fluent_english("Once upon a time" + story, vocab, min_words=20)
    for scheme, bound in QUANT_BOUNDS.items():
        assert ppl[scheme] <= ppl["f16"] * bound, (scheme, ppl)
    assert all(math.isfinite(v) for v in ppl.values())
