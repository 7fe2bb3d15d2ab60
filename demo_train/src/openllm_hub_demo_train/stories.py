"""Template stories for young children, in English and Chinese.

A story is drawn as a :class:`Cast` (hero, friend, place, object, ...) and a plot; each plot
writes the same events in both languages, every sentence picked from a few phrasings. Eight
plots (a lost thing, a found thing, a new friend, helping, fear, an adventure, sharing,
practice) times the word lists give hundreds of thousands of distinct stories, regular
enough for a model of a few million parameters to learn in minutes on a CPU.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from openllm_hub_demo_train import lexicon as lx


@dataclass(frozen=True)
class Character:
    """A story character, ready to be written about in either language."""

    name: str
    name_zh: str
    female: bool
    kind: str  # English noun: "cat", "girl"
    kind_zh: str  # child-story Chinese noun: "小猫", "小女孩"
    measure: str  # Chinese measure word: 只, 个
    trait: str
    trait_zh: str

    # English pronouns
    @property
    def p(self) -> str:
        return "she" if self.female else "he"

    @property
    def P(self) -> str:  # capitalised pronoun, read like the template text
        return "She" if self.female else "He"

    @property
    def poss(self) -> str:
        return "her" if self.female else "his"

    @property
    def obj(self) -> str:
        return "her" if self.female else "him"

    @property
    def self_(self) -> str:
        return "herself" if self.female else "himself"

    @property
    def ta(self) -> str:  # Chinese pronoun
        return "她" if self.female else "他"

    @property
    def a_kind(self) -> str:
        return lx.article(f"{self.trait} {self.kind}")

    @property
    def one_kind_zh(self) -> str:
        return f"一{self.measure}{self.trait_zh}的{self.kind_zh}"


@dataclass(frozen=True)
class Cast:
    """Everything one story is about."""

    hero: Character
    friend: Character
    place: lx.Place
    place2: lx.Place
    thing: lx.Word
    colour: lx.Word
    time: tuple[str, str]
    activity: tuple[str, str]
    food: tuple[str, str]
    spots: tuple[tuple[str, str], tuple[str, str], tuple[str, str]]
    skill: tuple[str, str]


def _character(rng: random.Random, *, exclude_kind: str = "", exclude_names: tuple[str, ...] = ()) -> Character:
    if rng.random() < 0.3:
        kind, kind_zh, female = rng.choice(lx.PEOPLE)
        measure = "个"
    else:
        c = rng.choice([c for c in lx.CREATURES if c.en != exclude_kind])
        kind, kind_zh, measure, female = c.en, c.zh_kid, c.measure, rng.random() < 0.5
    en = rng.choice([n for n in lx.NAMES_EN if n.female == female and n.en not in exclude_names])
    zh = rng.choice([n for n in lx.NAMES_ZH if n.female == female and n.zh not in exclude_names])
    trait, trait_zh = rng.choice(lx.TRAITS)
    return Character(en.en, zh.zh, female, kind, kind_zh, measure, trait, trait_zh)


def draw_cast(rng: random.Random) -> Cast:
    hero = _character(rng)
    friend = _character(rng, exclude_kind=hero.kind, exclude_names=(hero.name, hero.name_zh))
    place, place2 = rng.sample(lx.PLACES, 2)
    s1, s2, s3 = rng.sample(lx.HIDING_SPOTS, 3)
    return Cast(hero, friend, place, place2, rng.choice(lx.OBJECTS), rng.choice(lx.COLOURS), rng.choice(lx.TIMES),
                rng.choice(lx.ACTIVITIES), rng.choice(lx.FOODS), (s1, s2, s3), rng.choice(lx.SKILLS))


def cap(s: str) -> str:
    return s[:1].upper() + s[1:]


# ---- shared openings and endings ------------------------------------------------------------------------
def _intro_en(r: random.Random, c: Cast) -> list[str]:
    h = c.hero
    opening = r.choice([
        f"Once upon a time, there was {h.a_kind} named {h.name}.",
        f"Once upon a time, there was {h.a_kind} called {h.name}. {h.P} lived {c.place.at}.",
        f"Once upon a time, {c.place.at}, there lived {h.a_kind} named {h.name}.",
        f"Once upon a time, {lx.article(h.trait)} {h.kind} named {h.name} lived {c.place.at}.",
        f"Once upon a time, there was {h.a_kind}. {h.P} was called {h.name}.",
        f"There once was {h.a_kind} named {h.name}.",
        f"Long ago, {c.place.at}, there lived {h.a_kind}. {h.P} was called {h.name}.",
    ])
    likes = r.choice([
        f"{h.name} loved to {c.activity[0]}.",
        f"{h.P} loved to {c.activity[0]} every day.",
        f"Every day, {h.name} liked to {c.activity[0]} with {h.poss} friends.",
        f"More than anything, {h.name} liked to {c.activity[0]}.",
        "",
    ])
    return [opening, likes]


def _intro_zh(r: random.Random, c: Cast) -> list[str]:
    h = c.hero
    opening = r.choice([
        f"从前，有{h.one_kind_zh}，名叫{h.name_zh}。",
        f"从前，{c.place.zh_at}住着{h.one_kind_zh}，{h.ta}的名字叫{h.name_zh}。",
        f"从前，{c.place.zh_at}有{h.one_kind_zh}，叫{h.name_zh}。",
        f"从前有一{h.measure}{h.kind_zh}，叫{h.name_zh}。{h.name_zh}是一{h.measure}{h.trait_zh}的{h.kind_zh}。",
        f"很久很久以前，{c.place.zh_at}住着{h.one_kind_zh}，名叫{h.name_zh}。",
    ])
    likes = r.choice([
        f"{h.name_zh}最喜欢{c.activity[1]}。",
        f"{h.ta}每天都喜欢{c.activity[1]}。",
        f"{h.name_zh}每天都和朋友们一起{c.activity[1]}。",
        "",
    ])
    return [opening, likes]


def _friend_en(c: Cast) -> str:
    f = c.friend
    return f"{f.name}, {lx.article(f.kind)}"


def _friend_zh(c: Cast) -> str:
    f = c.friend
    return f"{f.kind_zh}{f.name_zh}"


def _end_en(r: random.Random, c: Cast, moral: str) -> list[str]:
    h, f = c.hero, c.friend
    return [r.choice([
        f"From that day on, {h.name} and {f.name} were best friends.",
        f"{h.name} learned that {moral}.",
        f"From then on, {h.name} always remembered that {moral}.",
        f"That night, {h.name} went to bed with a big smile.",
        f"{h.name} and {f.name} went home, tired and happy.",
    ]), r.choice(["The end.", "", ""])]


def _end_zh(r: random.Random, c: Cast, moral: str) -> list[str]:
    h, f = c.hero, c.friend
    return [r.choice([
        f"从那天起，{h.name_zh}和{f.name_zh}成了最好的朋友。",
        f"{h.name_zh}明白了，{moral}。",
        f"从此以后，{h.name_zh}一直记得：{moral}。",
        f"那天晚上，{h.name_zh}带着甜甜的笑容睡着了。",
        f"{h.name_zh}和{f.name_zh}开开心心地回家了。",
    ]), r.choice(["故事讲完了。", "", ""])]


# ---- plots: each returns (english sentences, chinese sentences) --------------------------------------
Plot = Callable[[random.Random, Cast], tuple[list[str], list[str]]]


def lost_thing(r: random.Random, c: Cast) -> tuple[list[str], list[str]]:
    h, f, t, col = c.hero, c.friend, c.thing, c.colour
    (s1, z1), (s2, z2), (s3, z3) = c.spots
    en = [
        *_intro_en(r, c),
        r.choice([f"{h.name} had {lx.article(col.en + ' ' + t.en)} that {h.p} loved very much.",
                  f"{h.P} had a special {t.en}. It was {col.en} and very pretty."]),
        r.choice([f"{c.time[0]}, {h.name} took the {t.en} to the {c.place2.en}.",
                  f"{c.time[0]}, {h.name} went to play {c.place2.at} with {h.poss} {t.en}."]),
        r.choice([f"But when {h.p} looked for it later, the {t.en} was gone!",
                  f"When it was time to go home, {h.name} could not find the {t.en}."]),
        r.choice([f"{h.name} felt very sad.", f"{h.name} was so sad that {h.p} began to cry.",
                  f"{h.name} was very worried."]),
        f"Then {_friend_en(c)}, came by.",
        r.choice([f'"Why are you sad?" asked {f.name}.', f'"What is wrong, {h.name}?" asked {f.name}.']),
        f'"I lost my {t.en}," said {h.name}.',
        r.choice([f'"Don\'t worry. I will help you find it," said {f.name}.',
                  f'"Let us look for it together," said {f.name}.']),
        f"They looked {s1} and {s2}.",
        f"At last, {f.name} saw something {col.en} {s3}.",
        f"It was the {t.en}!",
        r.choice([f'{h.name} was so happy. "Thank you, {f.name}!" {h.p} said.',
                  f'"Thank you for helping me," said {h.name}, and gave {f.name} a big hug.']),
        *_end_en(r, c, "good friends always help each other"),
    ]
    zh = [
        *_intro_zh(r, c),
        r.choice([f"{h.name_zh}有一{t.measure}{col.zh}的{t.zh}，{h.ta}非常喜欢它。",
                  f"{h.ta}有一{t.measure}特别的{t.zh}，是{col.zh}的，非常漂亮。"]),
        r.choice([f"{c.time[1]}，{h.name_zh}带着{t.zh}去{c.place2.zh}玩。",
                  f"{c.time[1]}，{h.name_zh}拿着{t.zh}去{c.place2.zh}玩。"]),
        r.choice([f"可是回家的时候，{h.name_zh}发现{t.zh}不见了！", f"玩着玩着，{h.ta}的{t.zh}不见了！"]),
        r.choice([f"{h.name_zh}很难过。", f"{h.name_zh}难过得哭了起来。", f"{h.name_zh}非常着急。"]),
        f"这时，{_friend_zh(c)}走了过来。",
        r.choice([f"{f.name_zh}问：“你为什么难过呀？”", f"{f.name_zh}问：“{h.name_zh}，你怎么了？”"]),
        f"{h.name_zh}说：“我的{t.zh}丢了。”",
        r.choice([f"{f.name_zh}说：“别担心，我来帮你找。”", f"{f.name_zh}说：“我们一起找吧！”"]),
        f"他们找了{z1}，又找了{z2}。",
        f"最后，{f.name_zh}在{z3}看到了一个{col.zh}的东西。",
        f"原来是{h.name_zh}的{t.zh}！",
        r.choice([f"{h.name_zh}高兴极了，说：“谢谢你，{f.name_zh}！”",
                  f"{h.name_zh}说：“谢谢你帮我！”然后紧紧地抱住了{f.name_zh}。"]),
        *_end_zh(r, c, "好朋友总是互相帮助"),
    ]
    return en, zh


def found_thing(r: random.Random, c: Cast) -> tuple[list[str], list[str]]:
    h, f, t, col = c.hero, c.friend, c.thing, c.colour
    (s1, z1) = c.spots[0]
    en = [
        *_intro_en(r, c),
        r.choice([f"{c.time[0]}, {h.name} went for a walk {c.place2.at}.",
                  f"{c.time[0]}, {h.name} was playing {c.place2.at}."]),
        f"Suddenly, {h.p} saw {lx.article(col.en + ' ' + t.en)} {s1}.",
        r.choice([f"{h.P} picked it up and looked at it.", f"{h.name} picked up the {t.en}."]),
        r.choice([f'"What a beautiful {t.en}!" said {h.name}.', f'"Whose {t.en} is this?" {h.name} wondered.']),
        f"{h.name} wanted to find out who it belonged to.",
        f"{h.P} went to ask {_friend_en(c)}.",
        f'"Is this your {t.en}?" asked {h.name}.',
        r.choice([f'"Yes, it is mine! I lost it yesterday," said {f.name}. "Thank you for finding it!"',
                  f'"My {t.en}! I looked for it everywhere," said {f.name}. "Thank you, {h.name}!"']),
        f"{f.name} was very happy, and {h.name} felt proud too.",
        *_end_en(r, c, "it feels good to be honest"),
    ]
    zh = [
        *_intro_zh(r, c),
        r.choice([f"{c.time[1]}，{h.name_zh}{c.place2.zh_at}散步。", f"{c.time[1]}，{h.name_zh}{c.place2.zh_at}玩。"]),
        f"突然，{h.ta}在{z1}看到了一{t.measure}{col.zh}的{t.zh}。",
        r.choice([f"{h.ta}把它捡了起来，仔细地看了看。", f"{h.name_zh}捡起了那{t.measure}{t.zh}。"]),
        r.choice([f"{h.name_zh}说：“多么漂亮的{t.zh}呀！”", f"{h.name_zh}想：“这是谁的{t.zh}呢？”"]),
        f"{h.name_zh}想知道这是谁的{t.zh}。",
        f"{h.ta}去问{_friend_zh(c)}。",
        f"{h.name_zh}问：“这是你的{t.zh}吗？”",
        r.choice([f"{f.name_zh}说：“是的，这是我的！我昨天把它弄丢了。谢谢你找到它！”",
                  f"{f.name_zh}说：“我的{t.zh}！我到处都找过了。谢谢你，{h.name_zh}！”"]),
        f"{f.name_zh}非常开心，{h.name_zh}也觉得很自豪。",
        *_end_zh(r, c, "诚实是一件很好的事"),
    ]
    return en, zh


def new_friend(r: random.Random, c: Cast) -> tuple[list[str], list[str]]:
    h, f = c.hero, c.friend
    act, act_zh = c.activity
    en = [
        *_intro_en(r, c),
        f"{c.time[0]}, {h.name} saw a new {f.kind} {c.place2.at}.",
        r.choice([f"The {f.kind} was sitting all alone.", f"The {f.kind} was standing alone and looked shy."]),
        f'"Hello! My name is {h.name}. What is your name?" asked {h.name}.',
        f'"I am {f.name}," said the {f.kind} quietly.',
        r.choice([f'"Do you want to play with me?" asked {h.name}.',
                  f'"Would you like to {act} with me?" asked {h.name}.']),
        f'{f.name} smiled and said, "Yes, please!"',
        r.choice(["They played together all day.", f"They had so much fun {c.place2.at}.",
                  "They laughed and played until the sun went down."]),
        f'When it was time to go home, {f.name} said, "Thank you for being my friend."',
        *_end_en(r, c, "a kind word can make a new friend"),
    ]
    zh = [
        *_intro_zh(r, c),
        f"{c.time[1]}，{h.name_zh}{c.place2.zh_at}看到了一{f.measure}新来的{f.kind_zh}。",
        r.choice([f"那{f.measure}{f.kind_zh}一个人孤零零地坐着。",
                  f"那{f.measure}{f.kind_zh}站在一边，看起来很害羞。"]),
        f"{h.name_zh}说：“你好！我叫{h.name_zh}。你叫什么名字？”",
        f"{f.kind_zh}小声地说：“我叫{f.name_zh}。”",
        r.choice([f"{h.name_zh}问：“你想和我一起玩吗？”", f"{h.name_zh}问：“你想和我一起{act_zh}吗？”"]),
        f"{f.name_zh}笑了，说：“好呀！”",
        r.choice(["他们一起玩了一整天。", f"他们{c.place2.zh_at}玩得非常开心。", "他们一直玩到太阳下山。"]),
        f"回家的时候，{f.name_zh}说：“谢谢你做我的朋友。”",
        *_end_zh(r, c, "一句友好的话可以交到新朋友"),
    ]
    return en, zh


_TROUBLES = (  # (trouble en, trouble zh, fix en, fix zh); {F}/{N} are the friend's / hero's names
    ("{F} was stuck up in a tree", "{F}被困在树上下不来了",
     "{N} found a long ladder and helped {F} climb down", "{N}找来一把长梯子，帮{F}爬了下来"),
    ("{F} had hurt a leg", "{F}的腿受伤了",
     "{N} put a soft bandage on the leg", "{N}给{F}的腿包上了软软的绷带"),
    ("{F} was very hungry", "{F}肚子饿极了",
     "{N} gave {F} some {food}", "{N}给了{F}一些{food}"),
    ("{F} could not find the way home", "{F}找不到回家的路了",
     "{N} walked with {F} all the way home", "{N}陪着{F}一直走回了家"),
    ("{F} was cold and wet from the rain", "{F}被雨淋湿了，冷得发抖",
     "{N} gave {F} a warm blanket", "{N}把一条暖和的毯子给了{F}"),
)


def helping(r: random.Random, c: Cast) -> tuple[list[str], list[str]]:
    h, f = c.hero, c.friend
    te, tz, fe, fz = r.choice(_TROUBLES)
    kw = {"F": f.name, "N": h.name, "food": c.food[0]}
    kz = {"F": f.name_zh, "N": h.name_zh, "food": c.food[1]}
    en = [
        *_intro_en(r, c),
        r.choice([f"{c.time[0]}, {h.name} heard someone crying {c.place2.at}.",
                  f"{c.time[0]}, {h.name} was walking {c.place2.at} when {h.p} heard a small voice."]),
        f"It was {_friend_en(c)}.",
        cap(te.format(**kw)) + ".",
        r.choice([f'"Please help me!" said {f.name}.', f'"Can you help me?" asked {f.name}.']),
        r.choice([f'"Don\'t worry, I will help you," said {h.name}.', f'"Of course I will help you," said {h.name}.']),
        cap(fe.format(**kw)) + ".",
        f"Soon {f.name} felt much better.",
        f'"Thank you, {h.name}! You are a good friend," said {f.name}.',
        f"{h.name} smiled. Helping others made {h.obj} feel happy inside.",
        *_end_en(r, c, "it is good to help others"),
    ]
    zh = [
        *_intro_zh(r, c),
        r.choice([f"{c.time[1]}，{h.name_zh}听到{c.place2.zh_at[1:]}有人在哭。",
                  f"{c.time[1]}，{h.name_zh}{c.place2.zh_at}走着，忽然听到一个小小的声音。"]),
        f"原来是{_friend_zh(c)}。",
        tz.format(**kz) + "。",
        r.choice([f"{f.name_zh}说：“请帮帮我！”", f"{f.name_zh}问：“你能帮帮我吗？”"]),
        r.choice([f"{h.name_zh}说：“别担心，我来帮你。”", f"{h.name_zh}说：“当然可以，我来帮你！”"]),
        fz.format(**kz) + "。",
        f"很快，{f.name_zh}就感觉好多了。",
        f"{f.name_zh}说：“谢谢你，{h.name_zh}！你真是一个好朋友。”",
        f"{h.name_zh}笑了。帮助别人让{h.ta}心里暖暖的。",
        *_end_zh(r, c, "帮助别人是一件快乐的事"),
    ]
    return en, zh


_FEARS = (("the dark", "黑夜"), ("the loud thunder", "打雷"), ("the big waves", "大浪"),
          ("the tall slide", "高高的滑梯"), ("the deep water", "深深的水"), ("the big dog next door", "隔壁的大狗"))
_HELPERS = (("mother", "妈妈"), ("father", "爸爸"), ("grandma", "奶奶"), ("grandpa", "爷爷"))


def fear(r: random.Random, c: Cast) -> tuple[list[str], list[str]]:
    h = c.hero
    fe, fz = r.choice(_FEARS)
    he, hz = r.choice(_HELPERS)
    en = [
        *_intro_en(r, c),
        f"But {h.name} was afraid of {fe}.",
        r.choice([f"Whenever {h.p} thought about {fe}, {h.p} felt scared.",
                  f"{h.P} did not like {fe} at all."]),
        f"{c.time[0]}, {h.name} told {h.poss} {he} about it.",
        r.choice([f'"Being brave does not mean you are never scared," said {h.poss} {he}.',
                  f'"Everyone is scared sometimes," said {h.poss} {he}. "Let us try together."']),
        f"{h.name} held {h.poss} {he}'s hand and took a deep breath.",
        r.choice(["It was not so bad after all!", "Step by step, the fear went away."]),
        f"{h.name} felt very proud of {h.self_}.",
        f"Now {h.name} is not afraid of {fe} anymore.",
        *_end_en(r, c, "being brave means trying even when you are scared")[1:],
    ]
    zh = [
        *_intro_zh(r, c),
        f"可是{h.name_zh}很害怕{fz}。",
        r.choice([f"每次想到{fz}，{h.ta}就觉得害怕。", f"{h.ta}一点儿也不喜欢{fz}。"]),
        f"{c.time[1]}，{h.name_zh}把这件事告诉了{hz}。",
        r.choice([f"{hz}说：“勇敢不是从来不害怕。”", f"{hz}说：“每个人有时候都会害怕。我们一起试试吧。”"]),
        f"{h.name_zh}拉着{hz}的手，深深地吸了一口气。",
        r.choice(["原来一点儿也不可怕！", "慢慢地，害怕的感觉不见了。"]),
        f"{h.name_zh}为自己感到非常自豪。",
        f"现在，{h.name_zh}再也不怕{fz}了。",
        *_end_zh(r, c, "勇敢就是害怕的时候也愿意试一试")[1:],
    ]
    return en, zh


_GOALS = (  # (want en, reached en, want zh, reached zh)
    ("find the biggest flower in the world", "found the biggest flower in the world",
     "找到世界上最大的花", "找到了世界上最大的花"),
    ("see the sea", "saw the blue sea", "去看大海", "看到了蓝蓝的大海"),
    ("find a rainbow", "found a beautiful rainbow", "寻找彩虹", "找到了美丽的彩虹"),
    ("reach the top of the hill", "reached the top of the hill", "爬到小山顶上", "爬到了小山顶上"),
    ("find a hidden treasure", "found a box full of shiny stones", "寻找藏起来的宝藏",
     "找到了一个装满亮晶晶石头的盒子"),
)
_OBSTACLES = (  # (obstacle en, solution en, obstacle zh, solution zh)
    ("a wide river", "they crossed it in a little boat", "一条很宽的河", "他们坐着一条小船过了河"),
    ("a dark cave", "they held hands and walked through it", "一个黑黑的山洞", "他们手拉着手走了过去"),
    ("a big hill", "they climbed it step by step", "一座大山", "他们一步一步地爬了上去"),
    ("a deep hole", "they jumped over it together", "一个深深的洞", "他们一起跳了过去"),
    ("a tall fence", "they found a small gate and went through", "一道高高的篱笆", "他们找到一扇小门，走了过去"),
)


def adventure(r: random.Random, c: Cast) -> tuple[list[str], list[str]]:
    h, f = c.hero, c.friend
    we, re_, wz, rz = r.choice(_GOALS)
    oe, se, oz, sz = r.choice(_OBSTACLES)
    food, food_zh = c.food
    en = [
        *_intro_en(r, c),
        f"{h.name} had always wanted to {we}.",
        f"{c.time[0]}, {h.p} packed a bag with some {food} and set off.",
        f"On the way, {h.p} met {_friend_en(c)}.",
        f'"Where are you going?" asked {f.name}.',
        f'"I am going to {we}," said {h.name}. "Do you want to come with me?"',
        r.choice([f'"Yes!" said {f.name}.', f'"I would love to!" said {f.name}.']),
        f"Soon they came to {oe}.",
        f'"What can we do?" asked {f.name}.',
        f"{h.name} thought for a moment. Then {se}.",
        f"At last, they {re_}.",
        r.choice(["It was more beautiful than they had ever imagined.", "They could not believe their eyes."]),
        f"They sat down together and ate the {food}.",
        *_end_en(r, c, "a journey is more fun with a friend"),
    ]
    zh = [
        *_intro_zh(r, c),
        f"{h.name_zh}一直想{wz}。",
        f"{c.time[1]}，{h.ta}背上一个装着{food_zh}的小包，出发了。",
        f"在路上，{h.ta}遇到了{_friend_zh(c)}。",
        f"{f.name_zh}问：“你要去哪里呀？”",
        f"{h.name_zh}说：“我要去{wz}。你想和我一起去吗？”",
        r.choice([f"{f.name_zh}说：“好呀！”", f"{f.name_zh}说：“我很想去！”"]),
        f"不久，他们来到了{oz}前面。",
        f"{f.name_zh}问：“我们该怎么办呢？”",
        f"{h.name_zh}想了想。然后，{sz}。",
        f"最后，他们{rz}。",
        r.choice(["那里比他们想象的还要美。", "他们简直不敢相信自己的眼睛。"]),
        f"他们一起坐下来，吃了{food_zh}。",
        *_end_zh(r, c, "和朋友一起旅行更快乐"),
    ]
    return en, zh


def sharing(r: random.Random, c: Cast) -> tuple[list[str], list[str]]:
    h, f = c.hero, c.friend
    food, food_zh = c.food
    en = [
        *_intro_en(r, c),
        f"{c.time[0]}, {h.name} had a big basket of {food}.",
        f"{h.P} wanted to eat them all by {h.self_}.",
        f"Then {h.p} saw {_friend_en(c)}, sitting {c.place2.at}.",
        r.choice([f"{f.name} looked very hungry.", f"{f.name} had nothing to eat."]),
        f"{h.name} thought for a moment.",
        f'"Would you like some {food}?" asked {h.name}.',
        f'"Oh yes, thank you!" said {f.name}.',
        r.choice([f"They ate the {food} together and laughed.", f"They shared the {food} and talked all afternoon."]),
        *_end_en(r, c, "sharing makes everyone happy"),
    ]
    zh = [
        *_intro_zh(r, c),
        f"{c.time[1]}，{h.name_zh}有一大篮{food_zh}。",
        f"{h.ta}想一个人把它们全吃掉。",
        f"这时，{h.ta}看到{_friend_zh(c)}坐{c.place2.zh_at}。",
        r.choice([f"{f.name_zh}看起来很饿。", f"{f.name_zh}什么吃的也没有。"]),
        f"{h.name_zh}想了想。",
        f"{h.name_zh}问：“你想吃一些{food_zh}吗？”",
        f"{f.name_zh}说：“好呀，谢谢你！”",
        r.choice([f"他们一起吃着{food_zh}，笑得很开心。", f"他们一边分享{food_zh}，一边聊了一下午。"]),
        *_end_zh(r, c, "分享让每个人都快乐"),
    ]
    return en, zh


def practice(r: random.Random, c: Cast) -> tuple[list[str], list[str]]:
    h, f = c.hero, c.friend
    ke, kz = c.skill
    en = [
        *_intro_en(r, c),
        f"{h.name} wanted to learn to {ke}.",
        r.choice([f"{h.P} tried, but {h.p} fell down.", f"{h.P} tried once, but it did not work."]),
        f"{h.name} felt sad and wanted to give up.",
        f'"Try again," said {f.name}, {lx.article(f.kind)}. "You can do it!"',
        f"So {h.name} tried again, and again, and again.",
        f"At last, {h.p} could {ke}!",
        r.choice([f'"I did it!" shouted {h.name}.', f'"Look, {f.name}! I can do it!" shouted {h.name}.']),
        f"{h.name} felt very proud.",
        *_end_en(r, c, "if you keep trying, you can do hard things"),
    ]
    zh = [
        *_intro_zh(r, c),
        f"{h.name_zh}想学{kz}。",
        r.choice([f"{h.ta}试了一下，可是摔倒了。", f"{h.ta}试了一次，可是没有成功。"]),
        f"{h.name_zh}很难过，想要放弃。",
        f"{_friend_zh(c)}说：“再试一次吧，你一定能行！”",
        f"于是{h.name_zh}试了一次又一次。",
        f"最后，{h.ta}终于学会了{kz}！",
        r.choice([f"{h.name_zh}大声喊道：“我做到了！”", f"{h.name_zh}喊道：“{f.name_zh}，你看！我学会了！”"]),
        f"{h.name_zh}觉得非常自豪。",
        *_end_zh(r, c, "只要坚持，就能做成难事"),
    ]
    return en, zh


PLOTS: tuple[Plot, ...] = (lost_thing, found_thing, new_friend, helping, fear, adventure, sharing, practice)


def join_en(sentences: list[str]) -> str:
    return " ".join(s for s in sentences if s)


def join_zh(sentences: list[str]) -> str:
    return "".join(s for s in sentences if s)


def story(rng: random.Random, cast: Cast | None = None, plot: Plot | None = None) -> tuple[str, str]:
    """One story as (English text, Chinese text): the same events, phrased independently."""
    cast = cast or draw_cast(rng)
    plot = plot or rng.choice(PLOTS)
    en, zh = plot(rng, cast)
    return join_en(en), join_zh(zh)
