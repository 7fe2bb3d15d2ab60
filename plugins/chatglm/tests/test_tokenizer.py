"""ChatGLM tokenizers: byte-exact round trips, v1 text normalisation and id layout, v2/v3
specials appended after the sentencepiece vocabulary. Expected ids are computed with the raw
sentencepiece processor, independently of our tokenizer classes."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import sentencepiece as spm
from openllm_hub_chatglm.tokenizer import V1Tokenizer, V2Tokenizer, load_tokenizer

from openllm_hub.errors import CorruptFileError, NotFoundError

TEXTS = (
    "Hello world", "  leading spaces", "trailing  ", "中文测试，你好！", "emoji 🦙🚀 ok", "tabs\tand\nnewlines\n\n",
    "x = f(1) + 2", "def f(x):\n    return x  +  1\n", " " * 81 + "wide", "\n\nstarts with newlines", "a\r\nb",
    "mixed 中文 and English\t\t tabs", "ünïcödé ﬁ ligature ½", "", " ", "\x00control\x1b[0m",
)


def _random_texts(n: int = 60) -> list[str]:
    rng = random.Random(0)
    alphabet = "ab cdXYZ 12  \t\n中文字测试你好 🦙🚀é,.!?#{}\\\"'"
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(n)]


@pytest.mark.parametrize("variant", ["chatglm", "chatglm2", "chatglm3"])
def test_round_trip_is_byte_exact(variant: str, tokenizer_files: dict[str, Path]) -> None:
    if variant == "chatglm":
        tok: V1Tokenizer | V2Tokenizer = V1Tokenizer(tokenizer_files["chatglm"], 0)
    else:
        tok = V2Tokenizer(tokenizer_files["chatglm2"], roles=variant == "chatglm3")
    for text in (*TEXTS, *_random_texts()):
        for special in (False, True):
            assert tok.decode(tok.encode(text, special)) == text, (variant, text, special)


def test_v1_normalisation_and_id_layout(tokenizer_files: dict[str, Path]) -> None:
    path = tokenizer_files["chatglm"]
    sp = spm.SentencePieceProcessor(model_file=str(path))
    pid = sp.piece_to_id
    for offset in (0, 20000):  # the final release uses 0, the tokenizer class defaults to 20000
        tok = V1Tokenizer(path, offset)
        ids = tok.encode("a\nb\tc   d" + " " * 81 + "e", add_special=False)
        raw = sp.encode("a<n>b<|tab|>c<|blank_3|>d<|blank_80|> e")
        assert ids == [i + offset for i in raw]
        for piece in ("<n>", "<|tab|>", "<|blank_3|>", "<|blank_80|>"):
            assert pid(piece) + offset in ids
        # a prompt ends with [gMASK] <sop>; the specials are pieces of the sentencepiece model
        assert tok.encode("hi")[-2:] == [pid("[gMASK]") + offset, pid("<sop>") + offset]
        assert tok.eos_ids == (pid("<eop>") + offset,)
        assert tok.decode([pid("[MASK]") + offset, *ids, pid("<eop>") + offset]) == "a\nb\tc   d" + " " * 81 + "e"
        assert tok.vocab_size == sp.get_piece_size() + offset


@pytest.mark.parametrize("roles", [False, True])
def test_v2_v3_specials_follow_the_vocabulary(roles: bool, tokenizer_files: dict[str, Path]) -> None:
    path = tokenizer_files["chatglm2"]
    sp = spm.SentencePieceProcessor(model_file=str(path))
    n = sp.get_piece_size()
    tok = V2Tokenizer(path, roles=roles)
    names = ["[MASK]", "[gMASK]", "[sMASK]", "sop", "eop"] + (
        ["<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"] if roles else [])
    assert [tok.special_id(t) for t in names] == list(range(n, n + len(names)))
    assert tok.vocab_size == n + len(names)
    assert tok.encode("hello world") == [n + 1, n + 3, *sp.encode("hello world")]
    assert tok.eos_ids == ((sp.eos_id(), n + 6, n + 8) if roles else (sp.eos_id(),))
    # specials, bos/eos/unk decode to nothing, as the released tokenizers map them to ""
    assert tok.decode([n + 1, n + 3, sp.bos_id(), *sp.encode("hello"), sp.eos_id(), n + 4]) == "hello"
    if not roles:  # ChatGLM2 treats role-token strings as text
        assert tok.decode(tok.encode("<|user|>\nhi")) == "<|user|>\nhi"


def test_v3_role_tokens_and_metadata_line(tokenizer_files: dict[str, Path]) -> None:
    """The text after a role token up to its first newline is encoded apart from the rest,
    as ``build_single_message`` does: role + encode(metadata + "\\n") + encode(content)."""
    path = tokenizer_files["chatglm2"]
    sp = spm.SentencePieceProcessor(model_file=str(path))
    tok = V2Tokenizer(path, roles=True)
    user, asst = tok.special_id("<|user|>"), tok.special_id("<|assistant|>")
    ids = tok.encode("<|user|>\nhow are you\ntoday?<|assistant|>", add_special=False)
    assert ids == [user, *sp.encode("\n"), *sp.encode("how are you\ntoday?"), asst]
    assert ids != [user, *sp.encode("\nhow are you\ntoday?"), asst]  # the split matters
    ids = tok.encode("<|observation|>meta\nresult", add_special=False)
    assert ids == [tok.special_id("<|observation|>"), *sp.encode("meta\n"), *sp.encode("result")]


def test_missing_and_broken_tokenizer_files(tmp_path: Path, tokenizer_files: dict[str, Path]) -> None:
    with pytest.raises(NotFoundError, match=r"tokenizer\.model is missing"):
        load_tokenizer(tmp_path, "chatglm2")
    with pytest.raises(NotFoundError, match=r"ice_text\.model is missing"):
        load_tokenizer(tmp_path, "chatglm")
    (tmp_path / "tokenizer.model").write_bytes(b"not a sentencepiece model")
    with pytest.raises(CorruptFileError, match="not a sentencepiece model"):
        load_tokenizer(tmp_path, "chatglm2")
    # a ChatGLM2 tokenizer posing as ChatGLM-6B's lacks the v1 special pieces
    shutil.copyfile(tokenizer_files["chatglm2"], tmp_path / "ice_text.model")
    with pytest.raises(CorruptFileError, match="special token"):
        load_tokenizer(tmp_path, "chatglm")


def test_v1_offset_comes_from_tokenizer_config(tmp_path: Path, tokenizer_files: dict[str, Path]) -> None:
    shutil.copyfile(tokenizer_files["chatglm"], tmp_path / "ice_text.model")
    plain = V1Tokenizer(tmp_path / "ice_text.model", 0).vocab_size
    assert load_tokenizer(tmp_path, "chatglm").vocab_size == 20000 + plain
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"num_image_tokens": 0}), encoding="utf-8")
    assert load_tokenizer(tmp_path, "chatglm").vocab_size == plain
