"""Exercises that can only be solved by reading the context: repeating a list, and short
"reading" quizzes whose answers were stated a sentence earlier.

Why they are in the corpus: stories alone teach a small model the templates but not to carry a
name from one sentence to the next; after 1,300 steps on stories and facts the first demo model
ranked the story's own hero among the names no better than chance. Text whose second half
repeats its first half, or answers questions about it, rewards copying on every token, which
teaches the model's attention to look back (induction heads), and stories, instructions and
translations then use that.
"""

from __future__ import annotations

import random

from openllm_hub_demo_train import lexicon as lx


def _items(r: random.Random, zh: bool, k: int) -> list[str]:
    out: list[str] = []
    while len(out) < k:
        kind = r.randrange(5)
        if kind == 0:
            n = r.choice(lx.NAMES_ZH if zh else lx.NAMES_EN)
            item = n.zh if zh else n.en
        elif kind == 1:
            c, t = r.choice(lx.COLOURS), r.choice(lx.OBJECTS)
            item = f"{c.zh}的{t.zh}" if zh else f"the {c.en} {t.en}"
        elif kind == 2:
            a = r.choice(lx.CREATURES)
            trait = r.choice(lx.TRAITS)
            item = f"{trait[1]}的{a.zh_kid}" if zh else f"the {trait[0]} {a.en}"
        elif kind == 3:
            item = str(r.randint(0, 99))
        else:
            f = r.choice(lx.FOODS)
            item = f[1] if zh else f[0]
        if item not in out:
            out.append(item)
    return out


def repeat_drill(r: random.Random, zh: bool) -> str:
    seq = _items(r, zh, r.randint(3, 7))
    if zh:
        s = "，".join(seq)
        return r.choice([f"请跟我说：{s}。{s}。", f"记住这些：{s}。再说一遍：{s}。",
                         f"我们来念一念：{s}。再念一遍：{s}。最后一遍：{s}。"])
    s = ", ".join(seq)
    return r.choice([f"Repeat after me: {s}. {cap(s)}.", f"Remember these: {s}. Say them again: {s}.",
                     f"Here is a list: {s}. Again: {s}. One more time: {s}."])


def cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def quiz(r: random.Random, zh: bool) -> str:
    """Two or three facts about named characters, then questions answered from them."""
    names = r.sample(lx.NAMES_ZH if zh else lx.NAMES_EN, 3)
    things = r.sample(lx.OBJECTS, 3)
    colours = r.sample(lx.COLOURS, 3)
    places = r.sample(lx.PLACES, 3)
    n = r.randint(2, 3)
    facts, qa = [], []
    for i in range(n):
        nm, t, c, p = names[i], things[i], colours[i], places[i]
        if zh:
            facts.append(r.choice([f"{nm.zh}有一{t.measure}{c.zh}的{t.zh}。", f"{nm.zh}{p.zh_at}。"]))
            if facts[-1].endswith(f"{t.zh}。"):
                qa.append(r.choice([f"{nm.zh}有什么？{nm.zh}有一{t.measure}{c.zh}的{t.zh}。",
                                    f"{nm.zh}的{t.zh}是什么颜色的？是{c.zh}的。"]))
            else:
                qa.append(f"{nm.zh}在哪里？{nm.zh}{p.zh_at}。")
        else:
            facts.append(r.choice([f"{nm.en} has {lx.article(c.en + ' ' + t.en)}.", f"{nm.en} is {p.at}."]))
            if " has " in facts[-1]:
                qa.append(r.choice([f"What does {nm.en} have? {nm.en} has {lx.article(c.en + ' ' + t.en)}.",
                                    f"What color is {nm.en}'s {t.en}? It is {c.en}."]))
            else:
                qa.append(f"Where is {nm.en}? {nm.en} is {p.at}.")
    r.shuffle(qa)
    if zh:
        return "".join(facts) + "".join(qa)
    return " ".join(facts + qa)
