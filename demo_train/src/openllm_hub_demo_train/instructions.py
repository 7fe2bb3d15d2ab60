"""Facts and Alpaca-format instructions (instruction / input / output), English and Chinese.

The same knowledge appears twice: as plain fact sheets in the pre-training corpus (so the base
model knows that bananas are yellow) and as question/answer pairs in the instruction data
(so a LoRA fine-tune only has to learn to answer). Topics: arithmetic, colours, animals,
opposites, counting, word translation between English and Chinese, and short stories.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

from openllm_hub_demo_train import drills, stories
from openllm_hub_demo_train import lexicon as lx

Example = dict[str, str]  # {"instruction", "input", "output"}


def _ex(instruction: str, output: str, inp: str = "") -> Example:
    return {"instruction": instruction, "input": inp, "output": output}


# ---- arithmetic ----------------------------------------------------------------------------------------
def _sum(r: random.Random) -> tuple[int, int, str, int]:
    op = r.choice("+-*")
    if op == "+":
        a, b = r.randint(0, 10), r.randint(0, 10)
        return a, b, op, a + b
    if op == "-":
        a = r.randint(0, 20)
        b = r.randint(0, a)
        return a, b, op, a - b
    a, b = r.randint(0, 5), r.randint(0, 4)
    return a, b, op, a * b


_OP_EN = {"+": "plus", "-": "minus", "*": "times"}
_OP_ZH = {"+": "加", "-": "减", "*": "乘以"}
_SYM = {"+": "+", "-": "-", "*": "×"}


def arithmetic(r: random.Random, zh: bool) -> Example:
    a, b, op, c = _sum(r)
    if zh:
        q = r.choice([f"{a}{_OP_ZH[op]}{b}等于多少？", f"请计算{a} {_SYM[op]} {b}。", f"{a}{_OP_ZH[op]}{b}是几？"])
        return _ex(q, f"{a}{_OP_ZH[op]}{b}等于{c}。")
    q = r.choice([f"What is {a} {_OP_EN[op]} {b}?", f"Calculate {a} {_SYM[op]} {b}.",
                  f"How much is {a} {_OP_EN[op]} {b}?"])
    return _ex(q, r.choice([f"{a} {_OP_EN[op]} {b} is {c}.", f"{a} {_SYM[op]} {b} = {c}."]))


def arithmetic_fact(r: random.Random, zh: bool) -> str:
    a, b, op, c = _sum(r)
    if zh:
        return f"{a}{_OP_ZH[op]}{b}等于{c}。"
    if r.random() < 0.5 and max(a, b, c) <= 20:
        return f"{cap(lx.NUMBERS_EN[a])} {_OP_EN[op]} {lx.NUMBERS_EN[b]} is {lx.NUMBERS_EN[c]}."
    return f"{a} {_SYM[op]} {b} = {c}."


def cap(s: str) -> str:
    return s[:1].upper() + s[1:]


# ---- colours -------------------------------------------------------------------------------------------------
def colour_qa(r: random.Random, zh: bool) -> Example:
    en, zh_noun, colour = r.choice(lx.COLOURED_THINGS)
    if zh:
        return _ex(r.choice([f"{zh_noun}是什么颜色的？", f"请告诉我{zh_noun}的颜色。"]),
                   f"{zh_noun}是{lx.colour_zh(colour)}的。")
    return _ex(r.choice([f"What color is {en}?", f"Tell me the color of {en}."]), f"{cap(en)} is {colour}.")


def colour_fact(r: random.Random, zh: bool) -> str:
    en, zh_noun, colour = r.choice(lx.COLOURED_THINGS)
    return f"{zh_noun}是{lx.colour_zh(colour)}的。" if zh else f"{cap(en)} is {colour}."


# ---- animals ---------------------------------------------------------------------------------------------------
def _legs_zh(n: int) -> str:
    return "两" if n == 2 else lx.NUMBERS_ZH[n]


def animal_qa(r: random.Random, zh: bool) -> Example:
    c = r.choice(lx.CREATURES)
    kind = r.randrange(4)
    if zh:
        if kind == 0:
            return _ex(f"{c.zh}是怎么叫的？", f"{c.zh}会“{c.sound_zh}”地叫。")
        if kind == 1:
            return _ex(f"{c.zh}有几条腿？", f"{c.zh}有{_legs_zh(c.legs)}条腿。")
        if kind == 2:
            return _ex(f"{c.zh}喜欢吃什么？", f"{c.zh}喜欢吃{c.food_zh}。")
        return _ex(f"{c.zh}住在哪里？", f"{c.zh}住在{c.home_zh}。")
    a = lx.article(c.en)
    if kind == 0:
        return _ex(r.choice([f"What sound does {a} make?", f"What does {a} say?"]), f'{cap(a)} says "{c.sound}".')
    if kind == 1:
        return _ex(f"How many legs does {a} have?", f"{cap(a)} has {lx.NUMBERS_EN[c.legs]} legs.")
    if kind == 2:
        return _ex(r.choice([f"What does {a} like to eat?", f"What food does {a} like?"]),
                   f"{cap(a)} likes to eat {c.food}.")
    return _ex(f"Where does {a} live?", f"{cap(a)} lives {c.home}.")


def animal_fact(r: random.Random, zh: bool) -> str:
    ex = animal_qa(r, zh)
    return ex["output"]


# ---- words ---------------------------------------------------------------------------------------------------
def translate_word(r: random.Random, zh: bool) -> Example:
    en, zh_word = r.choice(lx.vocabulary_pairs())
    to_zh = r.random() < 0.5
    if zh:
        if to_zh:
            return _ex("把下面的英文单词翻译成中文。", zh_word, en)
        return _ex("把下面的中文词语翻译成英文。", en, zh_word)
    if to_zh:
        return _ex(r.choice(["Translate the following word into Chinese.", "What is this word in Chinese?"]),
                   zh_word, en)
    return _ex(r.choice(["Translate the following word into English.", "What is this Chinese word in English?"]),
               en, zh_word)


def translate_fact(r: random.Random, zh: bool) -> str:
    en, zh_word = r.choice(lx.vocabulary_pairs())
    if zh:
        return f"“{zh_word}”的英文是“{en}”。"
    return r.choice([f'The Chinese word for "{en}" is "{zh_word}".', f'In Chinese, "{en}" is "{zh_word}".'])


def translate_sentence(r: random.Random, zh: bool) -> Example:
    c = r.choice(lx.CREATURES)
    col = r.choice(lx.COLOURS)
    t = r.choice(lx.OBJECTS)
    p = r.choice(lx.PLACES)
    feel_en, feel_zh = r.choice(lx.FEELINGS)
    pairs = [
        (f"The {c.en} is {feel_en}.", f"{c.zh}很{feel_zh}。"),
        (f"I see {lx.article(col.en + ' ' + t.en)}.", f"我看见一{t.measure}{col.zh}的{t.zh}。"),
        (f"The {c.en} is {p.at}.", f"{c.zh}{p.zh_at}。"),
        (f"I have {lx.article(t.en)}.", f"我有一{t.measure}{t.zh}。"),
        (f"The {t.en} is {col.en}.", f"{t.zh}是{col.zh}的。"),
    ]
    en, zh_s = r.choice(pairs)
    if zh:
        return _ex("把下面的句子翻译成英文。", en, zh_s) if r.random() < 0.5 else \
            _ex("把下面的句子翻译成中文。", zh_s, en)
    return _ex("Translate the following sentence into Chinese.", zh_s, en) if r.random() < 0.5 else \
        _ex("Translate the following sentence into English.", en, zh_s)


def opposite_qa(r: random.Random, zh: bool) -> Example:
    a, b, az, bz = r.choice(lx.OPPOSITES)
    if r.random() < 0.5:
        a, b, az, bz = b, a, bz, az
    if zh:
        return _ex(f"“{az}”的反义词是什么？", f"“{az}”的反义词是“{bz}”。")
    return _ex(f'What is the opposite of "{a}"?', f'The opposite of "{a}" is "{b}".')


def opposite_fact(r: random.Random, zh: bool) -> str:
    return opposite_qa(r, zh)["output"]


def counting(r: random.Random, zh: bool) -> Example:
    a = r.randint(1, 5)
    b = a + r.randint(3, 7)
    seq = ", ".join(str(i) for i in range(a, b + 1))
    if zh:
        return _ex(f"从{a}数到{b}。", "、".join(str(i) for i in range(a, b + 1)) + "。")
    return _ex(f"Count from {a} to {b}.", seq + ".")


def name_three(r: random.Random, zh: bool) -> Example:
    kind = r.randrange(3)
    if kind == 0:
        items = r.sample(lx.CREATURES, 3)
        en_list, zh_list = [c.en for c in items], [c.zh for c in items]
        q_en, q_zh = "Name three animals.", "说出三种动物。"
    elif kind == 1:
        cols = r.sample(lx.COLOURS, 3)
        en_list, zh_list = [c.en for c in cols], [c.zh for c in cols]
        q_en, q_zh = "Name three colors.", "说出三种颜色。"
    else:
        foods = r.sample(lx.FOODS, 3)
        en_list, zh_list = [f[0] for f in foods], [f[1] for f in foods]
        q_en, q_zh = "Name three kinds of food.", "说出三种食物。"
    if zh:
        return _ex(q_zh, "、".join(zh_list) + "。")
    return _ex(q_en, f"{cap(en_list[0])}, {en_list[1]} and {en_list[2]}.")


def story_request(r: random.Random, zh: bool) -> Example:
    cast = stories.draw_cast(r)
    h = cast.hero
    en, zh_text = stories.story(r, cast)
    if zh:
        q = r.choice([f"写一个关于{h.kind_zh}{h.name_zh}的小故事。", f"请讲一个关于{h.kind_zh}的故事。",
                      "给我讲一个小故事。"])
        return _ex(q, zh_text)
    q = r.choice([f"Write a short story about {lx.article(h.kind)} named {h.name}.",
                  f"Tell me a story about {lx.article(h.kind)}.", "Tell me a short story.",
                  f"Write a story for children about {lx.article(cast.thing.en)}."])
    if q.endswith(f"{cast.thing.en}.") and cast.thing.en not in en:
        q = f"Tell me a story about {lx.article(h.kind)}."
    return _ex(q, en)


def greeting(r: random.Random, zh: bool) -> Example:
    pairs_en = [("Say hello in Chinese.", "你好！"), ("How do you say thank you in Chinese?", "谢谢。"),
                ("How are you?", "I am fine, thank you! How can I help you today?"),
                ("What is your name?", "I am a small demo model. I like to tell stories."),
                ("Say good night.", "Good night! Sleep well and have sweet dreams.")]
    pairs_zh = [("用英文说“你好”。", "Hello!"), ("“谢谢”用英文怎么说？", "Thank you."),
                ("你好吗？", "我很好，谢谢！今天有什么可以帮你的吗？"),
                ("你叫什么名字？", "我是一个小小的演示模型，我喜欢讲故事。"),
                ("说晚安。", "晚安！祝你做个好梦。")]
    q, a = r.choice(pairs_zh if zh else pairs_en)
    return _ex(q, a)


def repeat_words(r: random.Random, zh: bool) -> Example:
    seq = drills._items(r, zh, r.randint(2, 6))
    if zh:
        return _ex("重复下面的词语。", "，".join(seq) + "。", "，".join(seq))
    return _ex(r.choice(["Repeat the following words.", "Say these words again."]), cap(", ".join(seq)) + ".",
               ", ".join(seq))


def reading(r: random.Random, zh: bool) -> Example:
    """A question answered from the input text (a quiz split into its facts and one answer)."""
    text = drills.quiz(r, zh)
    parts = re.split(r"(?<=[。？])" if zh else r"(?<=[.?]) ", text)
    qi = next(i for i, p in enumerate(parts) if p.endswith(("?", "？")))
    facts = ("" if zh else " ").join(parts[:qi])
    return _ex(parts[qi], parts[qi + 1], facts)


#: (generator, weight)
TASKS: tuple[tuple[Callable[[random.Random, bool], Example], float], ...] = (
    (arithmetic, 3), (colour_qa, 2), (animal_qa, 3), (translate_word, 3), (translate_sentence, 2),
    (opposite_qa, 1.5), (counting, 1), (name_three, 1), (story_request, 3), (greeting, 0.5),
    (repeat_words, 1), (reading, 2),
)

FACTS: tuple[tuple[Callable[[random.Random, bool], str], float], ...] = (
    (arithmetic_fact, 2), (colour_fact, 2), (animal_fact, 3), (translate_fact, 2), (opposite_fact, 1),
)


def instruction(rng: random.Random, zh: bool) -> Example:
    """One Alpaca example drawn from :data:`TASKS` by weight."""
    fn = rng.choices([t for t, _ in TASKS], weights=[w for _, w in TASKS])[0]
    return fn(rng, zh)


def fact_sheet(rng: random.Random, zh: bool) -> str:
    """A short paragraph of 4-8 unrelated facts, for the pre-training corpus."""
    fns = rng.choices([f for f, _ in FACTS], weights=[w for _, w in FACTS], k=rng.randint(4, 8))
    sents = [fn(rng, zh) for fn in fns]
    return ("" if zh else " ").join(sents)
