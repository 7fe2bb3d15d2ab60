"""Bilingual word lists the demo corpus is built from (English with Chinese equivalents).

Each entry carries what the templates need to write grammatical sentences in both
languages: articles and pronouns in English, measure words in Chinese. The same lists feed
the stories, the fact sheets and the translation instructions, so the corpus stays
consistent with itself.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Word:
    """A noun or adjective with its Chinese equivalent (``zh``) and Chinese measure word."""

    en: str
    zh: str
    measure: str = "个"


@dataclass(frozen=True)
class Creature:
    """A story character kind: ``zh_kid`` is the child-story form (小猫), ``zh`` the plain word."""

    en: str
    zh: str
    zh_kid: str
    measure: str
    sound: str
    sound_zh: str
    legs: int
    food: str
    food_zh: str
    home: str
    home_zh: str


@dataclass(frozen=True)
class Name:
    en: str
    zh: str
    female: bool


def article(phrase: str) -> str:
    """``a`` or ``an`` before ``phrase`` (by its first letter, enough for these word lists)."""
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


# ---- characters ---------------------------------------------------------------------------------
CREATURES: tuple[Creature, ...] = (
    Creature("cat", "猫", "小猫", "只", "meow", "喵喵", 4, "fish", "鱼", "in a warm house", "温暖的房子里"),
    Creature("dog", "狗", "小狗", "只", "woof", "汪汪", 4, "bones", "骨头", "in a little doghouse", "小狗窝里"),
    Creature("rabbit", "兔子", "小兔子", "只", "squeak", "吱吱", 4, "carrots", "胡萝卜", "in a hole in the ground",
             "地洞里"),
    Creature("bear", "熊", "小熊", "只", "growl", "呜呜", 4, "honey", "蜂蜜", "in a big cave", "大山洞里"),
    Creature("bird", "鸟", "小鸟", "只", "tweet", "叽叽喳喳", 2, "seeds", "种子", "in a nest in a tree",
             "树上的鸟窝里"),
    Creature("fox", "狐狸", "小狐狸", "只", "yip", "嗷嗷", 4, "berries", "浆果", "in a den in the woods",
             "树林的洞穴里"),
    Creature("duck", "鸭子", "小鸭子", "只", "quack", "嘎嘎", 2, "bread", "面包", "on a pond", "池塘里"),
    Creature("mouse", "老鼠", "小老鼠", "只", "squeak", "吱吱", 4, "cheese", "奶酪", "in a tiny hole in the wall",
             "墙上的小洞里"),
    Creature("frog", "青蛙", "小青蛙", "只", "ribbit", "呱呱", 4, "flies", "虫子", "in a pond", "池塘里"),
    Creature("lion", "狮子", "小狮子", "只", "roar", "嗷呜", 4, "meat", "肉", "on the grassland", "草原上"),
    Creature("pig", "猪", "小猪", "只", "oink", "哼哼", 4, "apples", "苹果", "on a farm", "农场里"),
    Creature("monkey", "猴子", "小猴子", "只", "ooh ooh", "吱吱", 2, "bananas", "香蕉", "in a tall tree", "高高的树上"),
    Creature("elephant", "大象", "小象", "头", "toot", "呜呜", 4, "grass and leaves", "草和树叶",
             "on the grassland", "草原上"),
    Creature("turtle", "乌龟", "小乌龟", "只", "hiss", "嘶嘶", 4, "leaves", "树叶", "in a river", "小河里"),
    Creature("sheep", "羊", "小羊", "只", "baa", "咩咩", 4, "grass", "青草", "on a farm", "农场里"),
    Creature("horse", "马", "小马", "匹", "neigh", "嘶嘶", 4, "hay", "干草", "in a stable", "马棚里"),
    Creature("panda", "熊猫", "熊猫宝宝", "只", "bleat", "嗯嗯", 4, "bamboo", "竹子", "in a bamboo forest",
             "竹林里"),
    Creature("owl", "猫头鹰", "小猫头鹰", "只", "hoot", "咕咕", 2, "mice", "老鼠", "in a hole in an old tree",
             "老树洞里"),
    Creature("cow", "牛", "小牛", "头", "moo", "哞哞", 4, "grass", "青草", "on a farm", "农场里"),
    Creature("squirrel", "松鼠", "小松鼠", "只", "chatter", "吱吱", 4, "nuts", "坚果", "in a tall tree", "高高的树上"),
)

PEOPLE: tuple[tuple[str, str, bool], ...] = (  # (en, zh, female)
    ("girl", "小女孩", True),
    ("boy", "小男孩", False),
)

NAMES_EN: tuple[Name, ...] = (
    Name("Lily", "莉莉", True), Name("Mia", "米娅", True), Name("Anna", "安娜", True), Name("Sara", "萨拉", True),
    Name("Emma", "艾玛", True), Name("Lucy", "露西", True), Name("Nina", "妮娜", True), Name("Rosa", "罗莎", True),
    Name("Zoe", "佐伊", True), Name("Ella", "艾拉", True),
    Name("Tom", "汤姆", False), Name("Ben", "本", False), Name("Max", "麦克斯", False), Name("Leo", "利奥", False),
    Name("Sam", "山姆", False), Name("Jack", "杰克", False), Name("Tim", "蒂姆", False), Name("Kai", "凯", False),
    Name("Finn", "芬恩", False), Name("Oscar", "奥斯卡", False),
)

NAMES_ZH: tuple[Name, ...] = (
    Name("Xiaohong", "小红", True), Name("Xiaohua", "小花", True), Name("Xiaolan", "小兰", True),
    Name("Meimei", "美美", True), Name("Xiaoyu", "小雨", True), Name("Lili", "丽丽", True),
    Name("Tiantian", "甜甜", True), Name("Xiaoxue", "小雪", True),
    Name("Xiaoming", "小明", False), Name("Xiaogang", "小刚", False), Name("Lele", "乐乐", False),
    Name("Doudou", "豆豆", False), Name("Dongdong", "冬冬", False), Name("Dingding", "丁丁", False),
    Name("Xiaohu", "小虎", False), Name("Pangpang", "胖胖", False),
)

#: Character adjectives: (en, zh).
TRAITS: tuple[tuple[str, str], ...] = (
    ("little", "小小"), ("brave", "勇敢"), ("clever", "聪明"), ("happy", "快乐"), ("shy", "害羞"),
    ("curious", "好奇"), ("kind", "善良"), ("funny", "有趣"), ("gentle", "温柔"), ("friendly", "友好"),
    ("lazy", "懒洋洋"), ("busy", "忙碌"),
)

# ---- places, things, colours -------------------------------------------------------------------------
@dataclass(frozen=True)
class Place:
    """``at``: English prepositional phrase; ``zh_at``: Chinese locative (在...里/上/边)."""

    en: str
    zh: str
    at: str
    zh_at: str


PLACES: tuple[Place, ...] = (
    Place("forest", "森林", "in the forest", "在森林里"),
    Place("park", "公园", "in the park", "在公园里"),
    Place("garden", "花园", "in the garden", "在花园里"),
    Place("farm", "农场", "on the farm", "在农场里"),
    Place("village", "村子", "in the village", "在村子里"),
    Place("beach", "海边", "at the beach", "在海边"),
    Place("lake", "湖边", "by the lake", "在湖边"),
    Place("hill", "小山", "on the hill", "在小山上"),
    Place("meadow", "草地", "in the meadow", "在草地上"),
    Place("school", "学校", "at school", "在学校里"),
    Place("river", "小河边", "by the river", "在小河边"),
    Place("town", "小镇", "in the town", "在小镇上"),
)

OBJECTS: tuple[Word, ...] = (
    Word("ball", "球", "个"), Word("kite", "风筝", "只"), Word("box", "盒子", "个"), Word("key", "钥匙", "把"),
    Word("hat", "帽子", "顶"), Word("book", "书", "本"), Word("flower", "花", "朵"), Word("shell", "贝壳", "个"),
    Word("stone", "石头", "块"), Word("feather", "羽毛", "根"), Word("boat", "小船", "条"), Word("map", "地图", "张"),
    Word("bell", "铃铛", "个"), Word("balloon", "气球", "个"), Word("umbrella", "雨伞", "把"),
    Word("cup", "杯子", "个"), Word("drum", "鼓", "面"), Word("scarf", "围巾", "条"), Word("toy car", "玩具车", "辆"),
    Word("blanket", "毯子", "条"),
)

COLOURS: tuple[Word, ...] = (
    Word("red", "红色"), Word("blue", "蓝色"), Word("green", "绿色"), Word("yellow", "黄色"), Word("white", "白色"),
    Word("black", "黑色"), Word("pink", "粉色"), Word("orange", "橙色"), Word("purple", "紫色"), Word("brown", "棕色"),
)

#: (en feeling adjective, zh)
FEELINGS: tuple[tuple[str, str], ...] = (
    ("happy", "开心"), ("sad", "难过"), ("scared", "害怕"), ("excited", "兴奋"), ("surprised", "惊讶"),
    ("tired", "累"), ("proud", "自豪"), ("angry", "生气"), ("worried", "担心"), ("calm", "平静"),
)

#: (en verb phrase after "loved to", zh verb phrase after "喜欢")
ACTIVITIES: tuple[tuple[str, str], ...] = (
    ("sing songs", "唱歌"), ("draw pictures", "画画"), ("read books", "看书"), ("run fast", "跑步"),
    ("swim in the water", "游泳"), ("dance", "跳舞"), ("climb trees", "爬树"), ("look at the stars", "看星星"),
    ("play games", "玩游戏"), ("help friends", "帮助朋友"), ("build sandcastles", "堆沙堡"), ("fly kites", "放风筝"),
    ("jump in puddles", "踩水坑"), ("pick flowers", "摘花"), ("tell jokes", "讲笑话"), ("bake cookies", "烤饼干"),
)

#: (en opening time phrase, zh)
TIMES: tuple[tuple[str, str], ...] = (
    ("One sunny morning", "一个阳光明媚的早上"), ("One rainy afternoon", "一个下雨的下午"),
    ("One cold winter day", "一个寒冷的冬天"), ("One warm evening", "一个温暖的傍晚"),
    ("One windy day", "一个刮风的日子"), ("One spring morning", "一个春天的早上"),
    ("One quiet night", "一个安静的夜晚"), ("One summer day", "一个夏天的日子"),
)

#: Where a lost thing turns up: (en, zh)
HIDING_SPOTS: tuple[tuple[str, str], ...] = (
    ("under the bed", "床底下"), ("behind the door", "门后面"), ("under a big tree", "一棵大树下"),
    ("in the tall grass", "高高的草丛里"), ("next to the pond", "池塘边"), ("inside an old box", "一个旧盒子里"),
    ("behind a rock", "一块石头后面"), ("under the table", "桌子下面"), ("in a bush", "灌木丛里"),
    ("on a high shelf", "高高的架子上"),
)

#: Foods to share: (en plural, zh)
FOODS: tuple[tuple[str, str], ...] = (
    ("apples", "苹果"), ("cookies", "饼干"), ("cakes", "蛋糕"), ("bananas", "香蕉"), ("cherries", "樱桃"),
    ("sandwiches", "三明治"), ("strawberries", "草莓"), ("pears", "梨"), ("sweets", "糖果"), ("peaches", "桃子"),
)

#: Skills to learn: (en infinitive phrase, zh)
SKILLS: tuple[tuple[str, str], ...] = (
    ("swim", "游泳"), ("ride a bike", "骑自行车"), ("fly a kite", "放风筝"), ("jump over the fence", "跳过篱笆"),
    ("climb the big tree", "爬上大树"), ("whistle", "吹口哨"), ("skate on the ice", "滑冰"),
    ("catch a ball", "接球"), ("write letters", "写字"), ("play the drum", "打鼓"),
)

# ---- facts (for the fact sheets and the instructions) -------------------------------------------------
#: Things with a typical colour: (en noun phrase, zh noun, English colour of COLOURS)
COLOURED_THINGS: tuple[tuple[str, str, str], ...] = (
    ("a banana", "香蕉", "yellow"), ("the sky", "天空", "blue"), ("grass", "草", "green"), ("snow", "雪", "white"),
    ("a strawberry", "草莓", "red"), ("an orange", "橙子", "orange"), ("coal", "煤", "black"),
    ("the sun", "太阳", "yellow"), ("a leaf", "树叶", "green"), ("milk", "牛奶", "white"),
    ("a carrot", "胡萝卜", "orange"), ("a grape", "葡萄", "purple"), ("chocolate", "巧克力", "brown"),
    ("a cloud", "云", "white"), ("the sea", "大海", "blue"), ("a tomato", "西红柿", "red"),
    ("a lemon", "柠檬", "yellow"), ("a frog", "青蛙", "green"), ("a pig", "猪", "pink"), ("a crow", "乌鸦", "black"),
)

NUMBERS_EN = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
              "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty")
NUMBERS_ZH = ("零", "一", "二", "三", "四", "五", "六", "七", "八", "九", "十", "十一", "十二", "十三", "十四", "十五",
              "十六", "十七", "十八", "十九", "二十")

#: (en, zh) opposites
OPPOSITES: tuple[tuple[str, str, str, str], ...] = (
    ("big", "small", "大", "小"), ("hot", "cold", "热", "冷"), ("up", "down", "上", "下"),
    ("day", "night", "白天", "晚上"), ("fast", "slow", "快", "慢"), ("happy", "sad", "开心", "难过"),
    ("tall", "short", "高", "矮"), ("open", "closed", "开", "关"), ("old", "new", "旧", "新"),
    ("full", "empty", "满", "空"), ("light", "dark", "亮", "暗"), ("long", "short", "长", "短"),
)


def colour_zh(en: str) -> str:
    """The Chinese colour word for an English one from :data:`COLOURS`."""
    for c in COLOURS:
        if c.en == en:
            return c.zh
    raise KeyError(en)


def bare(noun: str) -> str:
    """``noun`` without a leading article (``a grape`` -> ``grape``)."""
    for a in ("a ", "an ", "the "):
        if noun.startswith(a):
            return noun[len(a):]
    return noun


def vocabulary_pairs() -> list[tuple[str, str]]:
    """Every (English, Chinese) word pair the lists define, for translation exercises."""
    pairs: list[tuple[str, str]] = [(c.en, c.zh) for c in CREATURES]
    pairs += [(p.en, p.zh) for p in PLACES] + [(o.en, o.zh) for o in OBJECTS]
    pairs += [(c.en, c.zh) for c in COLOURS] + list(FEELINGS) + list(FOODS)
    pairs += [(NUMBERS_EN[i], NUMBERS_ZH[i]) for i in range(1, 11)]
    pairs += [(e, z) for e, _, z, _ in OPPOSITES] + [(e, z) for _, e, _, z in OPPOSITES]
    seen: set[str] = set()
    out = []
    for en, zh in pairs:
        if en not in seen:
            seen.add(en)
            out.append((en, zh))
    return out
