"""The demo model's training pipeline (``python -m openllm_hub_demo_train``) at toy size.

The full run takes half an hour; here the same code (corpus, tokenizer, model, loop, save)
runs on a ~50 k-parameter model in seconds, and the properties the real run relies on are
checked: a deterministic corpus with a disjoint held-out split, a LLaMA-layout tokenizer that
encodes any text, a loop that learns, bit-identical reruns, and an output the SDK loads.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import sentencepiece as spm
from openllm_hub_demo_train import corpus, lexicon, stories
from openllm_hub_demo_train import spm as demo_spm
from openllm_hub_demo_train.__main__ import TINY_SIZES, main
from openllm_hub_demo_train.train import PRESETS, lr_at, train

import openllm_hub

SMALL = corpus.CorpusSizes(train_docs=200, heldout_docs=30, alpaca_train=40, alpaca_heldout=10)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``all --preset tiny``: (work folder, model folder)."""
    base = tmp_path_factory.mktemp("demo-train")
    assert main(["all", "--preset", "tiny", "--work", str(base / "work"), "--out", str(base / "model")]) == 0
    return base / "work", base / "model"


def test_corpus_is_deterministic_and_seeded() -> None:
    a, b = corpus.build_corpus(0, SMALL), corpus.build_corpus(0, SMALL)
    assert a == b
    c = corpus.build_corpus(1, SMALL)
    assert c.train != a.train


def test_heldout_split_is_disjoint_from_training() -> None:
    c = corpus.build_corpus(0, SMALL)
    assert not set(c.heldout) & set(c.train)
    seen = {e["instruction"] + "\x00" + e["input"] for e in c.alpaca_train}
    assert not any(e["instruction"] + "\x00" + e["input"] in seen for e in c.alpaca_heldout)


def test_corpus_mixes_languages_plots_and_instruction_tasks() -> None:
    c = corpus.build_corpus(0, corpus.CorpusSizes(train_docs=600, heldout_docs=0, alpaca_train=400, alpaca_heldout=0))
    chinese = [d for d in c.train if "。" in d]  # Chinese full stop: Chinese stories and fact sheets
    english = [d for d in c.train if "。" not in d]
    # MIX asks for 52 % English documents (stories + facts) and 48 % Chinese; 600 draws stay
    # within +-10 points of that with overwhelming probability (binomial sd = 2 points)
    assert 0.42 < len(english) / len(c.train) < 0.62
    assert 0.38 < len(chinese) / len(c.train) < 0.58
    assert sum(d.startswith("Once upon a time") for d in c.train) > 100
    assert sum(d.startswith("从前") for d in c.train) > 100
    assert all("\n" not in d for d in c.train)  # one document per line
    for field in ("instruction", "input", "output"):
        assert all(isinstance(e[field], str) for e in c.alpaca_train)
    assert sum(bool(e["input"]) for e in c.alpaca_train) > 40  # translations carry an input
    # every plot is reachable and writes both languages
    import random

    for plot in stories.PLOTS:
        en, zh = stories.story(random.Random(3), plot=plot)
        assert en.isascii() and len(en.split()) > 40
        assert len(zh) > 60 and not zh.isascii()


def test_article_and_vocabulary() -> None:
    assert lexicon.article("orange kite") == "an orange kite"
    assert lexicon.article("red kite") == "a red kite"
    pairs = lexicon.vocabulary_pairs()
    assert len({en for en, _ in pairs}) == len(pairs)
    assert ("cat", "猫") in pairs


def test_tokenizer_has_llama_layout_and_byte_fallback(tiny_run: tuple[Path, Path]) -> None:
    _, model = tiny_run
    sp = spm.SentencePieceProcessor(model_file=str(model / "tokenizer.model"))
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, -1)
    assert [sp.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    assert sp.get_piece_size() == demo_spm.TINY_VOCAB
    # text the corpus never contains (newlines, emoji, an unseen CJK character) still round-trips
    text = "Once upon a time,\n\tthere was 🦙 鑫."
    ids = sp.encode(text)
    assert sp.unk_id() not in ids
    assert sp.decode(ids) == text
    assert sp.piece_to_id("<0x0A>") in ids  # newline through byte fallback, as in LLaMA's tokenizer
    pieces = sp.encode("2024 and 31", out_type=str)
    assert all(sum(ch.isdigit() for ch in p) <= 1 for p in pieces)  # digits split one by one, as in LLaMA


def test_tiny_run_writes_a_folder_the_sdk_loads(tiny_run: tuple[Path, Path]) -> None:
    work, model = tiny_run
    for name in ("train.txt", "heldout.txt", "alpaca_train.json", "alpaca_heldout.json", "tokenizer.model"):
        assert (work / name).is_file()
    assert len(corpus.read_lines(work / "train.txt")) == TINY_SIZES.train_docs
    cfg = json.loads((model / "config.json").read_text())
    info = json.loads((model / "training.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["tie_word_embeddings"] is True
    assert cfg["vocab_size"] == demo_spm.TINY_VOCAB
    assert info["result"]["steps"] == PRESETS["tiny"].steps
    assert math.isfinite(info["result"]["final_loss"])
    card = (model / "MODEL_CARD.md").read_text()
    assert f"{info['result']['heldout_perplexity']:.3f}" in card
    with openllm_hub.load(model, engine="transformers", device="cpu") as m:
        assert m.info.format == "hf"
        ids = m.tokenize("Once upon a time")
        rows = m.logits(ids)
        assert rows.shape == (len(ids), cfg["vocab_size"])


def _train_tiny(work: Path, out: Path, steps: int, lr: float) -> dict[str, object]:
    cfg = dataclasses.replace(PRESETS["tiny"], steps=steps, lr=lr, warmup=2, log_every=5)
    res = train(corpus.read_lines(work / "train.txt"), corpus.read_lines(work / "heldout.txt"),
                work / "tokenizer.model", out, cfg, echo=lambda _: None)
    return {"log": res.log, "nll": res.heldout_nll}


def test_loop_learns_and_reruns_bit_identically(tiny_run: tuple[Path, Path], tmp_path: Path) -> None:
    work, _ = tiny_run
    a = _train_tiny(work, tmp_path / "a", steps=40, lr=1e-2)
    log = a["log"]
    assert isinstance(log, list)
    # the first logged loss is near ln(vocab) (untrained); 40 steps on a 50 k-parameter model
    # bring the training loss well below it: unigram statistics alone are worth ~2 nats here
    assert log[0]["loss"] > math.log(demo_spm.TINY_VOCAB) - 0.5
    assert log[-1]["loss"] < log[0]["loss"] - 1.0
    assert a["nll"] < math.log(demo_spm.TINY_VOCAB) - 1.0  # held-out documents too
    b = _train_tiny(work, tmp_path / "b", steps=40, lr=1e-2)
    # same seed: the same losses and weights, to the bit (wall-clock seconds aside)
    assert b["nll"] == a["nll"]
    assert [(r["step"], r["loss"]) for r in b["log"]] == [(r["step"], r["loss"]) for r in log]  # type: ignore[index]
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_learning_rate_schedule() -> None:
    cfg = dataclasses.replace(PRESETS["demo"], steps=100, warmup=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(99, cfg) == pytest.approx(0.1, abs=1e-3)
    assert all(lr_at(i, cfg) >= lr_at(i + 1, cfg) for i in range(10, 99))


def test_chat_stage_runs_the_sdk_lora_commands(tiny_run: tuple[Path, Path], tmp_path: Path) -> None:
    """``chat``: ``openllm-hub lora train`` then ``openllm-hub merge-lora`` on the tiny model; the
    merged folder holds different attention weights than its base, loads, and has its card."""
    from safetensors.numpy import load_file

    work, model = tiny_run
    out = tmp_path / "chat"
    assert main(["chat", "--preset", "tiny", "--work", str(work), "--base", str(model), "--out", str(out)]) == 0
    assert (work / "lora" / "adapter_config.json").is_file()
    base_w, chat_w = load_file(str(model / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert base_w.keys() == chat_w.keys()
    q = "model.layers.0.self_attn.q_proj.weight"  # a LoRA target: changed by the merge
    assert (base_w[q] != chat_w[q]).any()
    norm = "model.norm.weight"  # not a target: unchanged
    assert (base_w[norm] == chat_w[norm]).all()
    card = (out / "MODEL_CARD.md").read_text()
    assert "openllm-hub lora train" in card and "openllm-hub merge-lora" in card
    with openllm_hub.load(out, engine="transformers", device="cpu") as m:
        assert m.generate("Once upon a time", max_new_tokens=4, temperature=0).usage.completion_tokens >= 1


def test_drills_repeat_and_quizzes_answer_from_their_own_text() -> None:
    import random
    import re

    from openllm_hub_demo_train import drills

    r = random.Random(7)
    for _ in range(50):
        en = drills.repeat_drill(r, zh=False)
        rest = en.split(": ", 1)[1]
        seq = rest.split(". ")[0].lower()
        assert rest.lower().count(seq) >= 2, en  # the list is said at least twice
        zh = drills.repeat_drill(r, zh=True)
        first = zh.split("：", 1)[1].split("。")[0]
        assert zh.count(first) >= 2, zh
        quiz = drills.quiz(r, zh=False)
        statements = set(re.findall(r"[A-Z][a-z]+ (?:has|is) [^.?]+\.", quiz))
        for q, a in re.findall(r"([^.?]+\?) ([^.?]+\.)", quiz):
            if a.startswith("It is "):  # "What color is N's T? It is C." -> "N has a C T." was stated
                name, thing = re.match(r" ?What color is ([A-Z][a-z]+)'s (.+)\?", q).groups()  # type: ignore[union-attr]
                colour = a[len("It is "):-1]
                assert any(s.startswith(f"{name} has") and s.endswith(f"{colour} {thing}.") for s in statements), quiz
            else:
                assert quiz.count(a) >= 2, quiz  # the answer repeats a stated fact
