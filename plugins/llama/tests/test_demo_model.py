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
from openllm_hub_demo_train import corpus, lexicon
from openllm_hub_llama.demo import DEMO_CHAT_DIR, DEMO_DIR, MODEL_NAMES, _checked

import openllm_hub
from openllm_hub.api import resolve_source
from openllm_hub.core.perplexity import perplexity
from openllm_hub.errors import NotFoundError

MB = 1_000_000
#: Uniform guessing over the 3,072-piece vocabulary has perplexity 3072; the training split's
#: unigram frequencies give 378 on these held-out documents. The shipped model must stay below 10:
#: under 1/300 of chance and 1/35 of the unigram model (it measures ~2.2 here, see MODEL_CARD.md).
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
    for folder in (DEMO_DIR, DEMO_CHAT_DIR):
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
    chat = resolve_source("demo-chat")
    assert chat.path == DEMO_CHAT_DIR and dict(chat.options or {})["chat_template"] == "alpaca"
    assert {m.name for m in MODEL_NAMES} == {"demo", "demo-chat"}
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


#: Held-out perplexity of a quantization relative to f16, at most. q8_0: +1 %, the issue's bar.
#: 5- and 4-bit: +2 %. Measured on the shipped model: within +-0.13 % on this test's 1,389 tokens
#: and within +0.05 % on the whole 35,425-token held-out split (benchmarks/RESULTS.md, Demo model):
#: its confident, template-like predictions barely move under 4-bit weights. 2 % is ~15x the
#: largest deviation seen, tight enough to catch a broken quantizer (a wrong scale or block
#: layout sends perplexity far up) without failing on a different but correct llama.cpp build.
QUANT_BOUNDS = {"q8_0": 1.01, "q5_1": 1.02, "q4_K_M": 1.02, "q4_0": 1.02}


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


# ---- demo-chat ------------------------------------------------------------------------------------------
def _chat_behaviour(name: str, examples: list[dict[str, str]]) -> dict[str, float]:
    """Rates over held-out instructions: the answer is in the instruction's language, ends by
    itself (end-of-sequence or the template's stop) within 48 tokens, and leaks no template."""
    same_lang = stops = clean = 0
    with openllm_hub.load(name, engine="transformers", device="cpu") as model:
        for e in examples:
            c = model.chat([{"role": "user", "content": e["instruction"]}], template="alpaca", max_new_tokens=48,
                           temperature=0)
            zh_q = any(_is_cjk(ch) for ch in e["instruction"])
            zh_a = any(_is_cjk(ch) for ch in c.text)
            same_lang += zh_q == zh_a and bool(c.text.strip())
            stops += c.finish_reason == "stop"
            clean += "###" not in c.text and "Instruction" not in c.text
    n = len(examples)
    return {"language": same_lang / n, "stops": stops / n, "clean": clean / n}


def test_demo_chat_answers_instructions_where_the_base_does_not(demo_corpus: corpus.Corpus) -> None:
    """Short-answer instructions it was not trained on (arithmetic, colours, animals, opposites,
    in English and Chinese): the tuned model answers in the question's language and stops, as its
    Alpaca data taught it; the base model, given the same prompts, runs on with stories. (Whether
    the answers are right is another matter: mostly not, see its MODEL_CARD.md.)"""
    examples = [e for e in demo_corpus.alpaca_heldout if not e["input"] and len(e["output"]) < 40][:16]
    assert len(examples) == 16
    tuned = _chat_behaviour("demo-chat", examples)
    base = _chat_behaviour("demo", examples)
    assert tuned["language"] >= 0.9 and tuned["stops"] >= 0.9 and tuned["clean"] == 1.0, tuned
    assert tuned["language"] + tuned["stops"] > base["language"] + base["stops"] + 0.5, (tuned, base)


def test_chat_command_talks_to_demo_chat(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                         clean_cache: Path) -> None:
    import io

    from openllm_hub.cli import main

    # /reset between the questions: with the first exchange in its prompt, a 4 M-parameter model
    # tends to answer the second question in the first one's language and kind
    monkeypatch.setattr("sys.stdin", io.StringIO("What is 2 plus 3?\n/reset\n香蕉是什么颜色的？\n"))
    assert main(["chat", "demo-chat", "-n", "32", "--temp", "0"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    assert len(lines) == 2, lines  # one answer per question, each ended by the model
    assert not any(_is_cjk(ch) for ch in lines[0]) and any(_is_cjk(ch) for ch in lines[1])
    assert sorted(clean_cache.rglob("*.gguf"))  # demo-chat ran on llama.cpp, converted into the cache
