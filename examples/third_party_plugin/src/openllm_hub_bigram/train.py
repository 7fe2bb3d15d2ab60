"""Train the shipped bigram model on generated stories (English and Chinese).

The corpus is generated here from templates (no third-party text, so no licence question):
``python -m openllm_hub_bigram.train [OUT]`` rewrites the built-in model deterministically.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from openllm_hub.plugin import atomic_output
from openllm_hub_bigram import BUILTIN_MODEL
from openllm_hub_bigram.engine_numpy import save, train

NAMES = ["Lily", "Tom", "Mia", "Ben", "Anna", "Sam"]
ANIMALS = ["cat", "dog", "bird", "fox", "rabbit", "duck"]
PLACES = ["the park", "the forest", "the garden", "the river", "the town"]
THINGS = ["a red ball", "a big tree", "a small box", "a shiny stone", "a blue kite"]
FEELINGS = ["happy", "sad", "surprised", "tired", "excited"]
ZH_NAMES = ["小明", "小红", "小兰", "小刚"]
ZH_ANIMALS = ["小猫", "小狗", "小鸟", "兔子"]
ZH_PLACES = ["公园", "森林", "花园", "河边"]


def story(rng: random.Random) -> str:
    if rng.random() < 0.2:
        n, a, p = rng.choice(ZH_NAMES), rng.choice(ZH_ANIMALS), rng.choice(ZH_PLACES)
        return f"从前，{n}和一只{a}去了{p}。他们玩得很开心。最后，他们一起回家了。"
    n, a, p, t, f = (rng.choice(x) for x in (NAMES, ANIMALS, PLACES, THINGS, FEELINGS))
    return (f"Once upon a time, {n} had a little {a}. One day they went to {p} and found {t}. "
            f"{n} was very {f}. The {a} played with {t} all day. Then they went home and slept.")


def corpus(n: int = 4000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [story(rng) for _ in range(n)]


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else BUILTIN_MODEL
    with atomic_output(out, force=True) as tmp:
        save(train(corpus()), tmp)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
