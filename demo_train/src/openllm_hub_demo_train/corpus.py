"""The demo corpus: stories and fact sheets (pre-training) and Alpaca data (instruction tuning),
with held-out splits, written deterministically from a seed.

Files written by :func:`write_corpus` into a folder:

* ``train.txt`` / ``heldout.txt``: one document per line (stories never contain newlines);
* ``alpaca_train.json`` / ``alpaca_heldout.json``: lists of ``{"instruction", "input", "output"}``.

Held-out documents come from a separate random stream and any that also occur in the
training split are dropped, so held-out perplexity is measured on text the model never saw.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from openllm_hub.core.io import atomic_output
from openllm_hub_demo_train import drills, instructions, stories

#: Share of each document kind in the pre-training corpus.
MIX: tuple[tuple[str, float], ...] = (
    ("story_en", 0.36), ("story_zh", 0.32), ("facts_en", 0.08), ("facts_zh", 0.08),
    ("drill_en", 0.04), ("drill_zh", 0.04), ("quiz_en", 0.04), ("quiz_zh", 0.04),
)


@dataclass(frozen=True)
class CorpusSizes:
    train_docs: int = 24000
    heldout_docs: int = 400
    alpaca_train: int = 6000
    alpaca_heldout: int = 200


def document(rng: random.Random) -> str:
    kind = rng.choices([k for k, _ in MIX], weights=[w for _, w in MIX])[0]
    zh = kind.endswith("_zh")
    if kind.startswith("story"):
        en, zh_text = stories.story(rng)
        return zh_text if zh else en
    if kind.startswith("drill"):
        return drills.repeat_drill(rng, zh)
    if kind.startswith("quiz"):
        return drills.quiz(rng, zh)
    return instructions.fact_sheet(rng, zh=zh)


def _stream(seed: int, split: str) -> random.Random:
    # string seeds are hashed with SHA-512 by random.seed: stable across runs and platforms
    return random.Random(f"openllm-hub-demo:{seed}:{split}")


def documents(seed: int, n: int, split: str, exclude: set[str] | None = None) -> list[str]:
    rng = _stream(seed, split)
    out: list[str] = []
    while len(out) < n:
        doc = document(rng)
        if exclude is None or doc not in exclude:
            out.append(doc)
    return out


def alpaca(seed: int, n: int, split: str, exclude: set[str] | None = None) -> list[instructions.Example]:
    rng = _stream(seed, "alpaca-" + split)
    out: list[instructions.Example] = []
    while len(out) < n:
        ex = instructions.instruction(rng, zh=rng.random() < 0.45)
        key = ex["instruction"] + "\x00" + ex["input"]
        if exclude is None or key not in exclude:
            out.append(ex)
    return out


@dataclass(frozen=True)
class Corpus:
    train: list[str]
    heldout: list[str]
    alpaca_train: list[instructions.Example]
    alpaca_heldout: list[instructions.Example]


def build_corpus(seed: int = 0, sizes: CorpusSizes | None = None) -> Corpus:
    sizes = sizes or CorpusSizes()
    train = documents(seed, sizes.train_docs, "train")
    heldout = documents(seed, sizes.heldout_docs, "heldout", exclude=set(train))
    a_train = alpaca(seed, sizes.alpaca_train, "train")
    seen = {e["instruction"] + "\x00" + e["input"] for e in a_train}
    # the small tasks (arithmetic, word translation) have few distinct prompts: held-out
    # examples are the ones whose prompt the training split does not contain
    a_held = alpaca(seed, sizes.alpaca_heldout, "heldout", exclude=seen)
    return Corpus(train, heldout, a_train, a_held)


def write_corpus(out_dir: str | Path, seed: int = 0, sizes: CorpusSizes | None = None) -> Corpus:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    corpus = build_corpus(seed, sizes)
    for name, docs in (("train.txt", corpus.train), ("heldout.txt", corpus.heldout)):
        with atomic_output(out / name, force=True) as tmp:
            tmp.write_text("\n".join(docs) + "\n", encoding="utf-8")
    for name, rows in (("alpaca_train.json", corpus.alpaca_train), ("alpaca_heldout.json", corpus.alpaca_heldout)):
        with atomic_output(out / name, force=True) as tmp:
            tmp.write_text(json.dumps(rows, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return corpus


def read_lines(path: str | Path) -> list[str]:
    return [ln for ln in Path(path).read_text(encoding="utf-8").split("\n") if ln]
