"""Tokenizers: the World tokenizer against the package's TRIE_TOKENIZER, byte-exact round
trips, the 20B-style JSON path, and the vocabulary checks."""

from __future__ import annotations

import gc
import random
from pathlib import Path

import pytest
from openllm_hub_rwkv.tokenizer import WORLD_IDS, JsonTokenizer, choose_tokenizer, fits, world_tokenizer

from openllm_hub.errors import InvalidParameterError, NotFoundError

TEXTS = (
    "Hello world",
    "企鹅会飞吗？企鹅是不会飞的。人工智能正在改变世界。",
    "emoji 🦙🚀🎉👨‍👩‍👧 ok",
    "  leading spaces\ttabs\n\nnewlines\r\n",
    "User: 你好\n\nAssistant: 你好！有什么可以帮你？",
    "mixed 日本語 한국어 Ελληνικά Русский العربية ∑∫√ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
)


def _random_text(seed: int, n: int = 2000) -> str:
    rng = random.Random(seed)
    pools = [(0x20, 0x7E), (0x4E00, 0x9FFF), (0x1F300, 0x1FAFF), (0x0400, 0x04FF), (0x3040, 0x30FF)]
    chars = []
    for _ in range(n):
        lo, hi = rng.choice(pools)
        chars.append(chr(rng.randint(lo, hi)))
    return "".join(chars)


def test_world_equals_package_trie_tokenizer() -> None:
    """Same ids as rwkv's own TRIE_TOKENIZER on varied text (its greedy longest match)."""
    import os

    import rwkv
    from rwkv.rwkv_tokenizer import TRIE_TOKENIZER

    trie = TRIE_TOKENIZER(os.path.join(os.path.dirname(rwkv.__file__), "rwkv_vocab_v20230424.txt"))
    ours = world_tokenizer()
    try:
        assert ours.n_ids == WORLD_IDS == max(trie.idx2token) + 1
        for text in (*TEXTS, _random_text(1), _random_text(2), Path(__file__).read_text(encoding="utf-8")):
            ids = ours.encode(text)
            assert ids == trie.encode(text)
            assert ours.decode_bytes(ids) == trie.decodeBytes(ids)
    finally:
        del trie
        gc.collect()  # the trie is ~500k objects in reference cycles; free it now


@pytest.mark.parametrize("text", TEXTS)
def test_world_round_trip_is_byte_exact(text: str) -> None:
    tok = world_tokenizer()
    ids = tok.encode(text)
    assert tok.decode_bytes(ids) == text.encode("utf-8")
    assert tok.decode(ids) == text


def test_world_decode_is_lenient() -> None:
    tok = world_tokenizer()
    ids = tok.encode("你")  # one character, three bytes
    single_bytes = [tok.bytes_to_id[bytes([b])] for b in "你".encode()]
    assert tok.decode(single_bytes[:2]) == "\ufffd"  # an unfinished character: one U+FFFD, no error
    assert tok.decode(single_bytes) == "你" and tok.decode(ids) == "你"
    assert tok.decode([0, *ids, 65530, 65535]) == "你"  # end-of-text and padding rows decode to nothing


def test_json_tokenizer_round_trip(bpe_json: Path) -> None:
    tok = JsonTokenizer(bpe_json)
    assert tok.n_ids == 512
    for text in TEXTS:
        assert tok.decode(tok.encode(text)) == text
    assert tok.decode([0, 1, *tok.encode("hi")]) == "hi"  # <|endoftext|> and <|padding|> are special


def test_choice_by_vocabulary(bpe_json: Path, tmp_path: Path) -> None:
    assert choose_tokenizer("auto", 65536, tmp_path / "x.pth").name == "world"
    auto = choose_tokenizer("auto", 512, bpe_json.parent / "model.pth")  # found next to the checkpoint
    assert isinstance(auto, JsonTokenizer) and auto.path == bpe_json
    with pytest.raises(NotFoundError, match="20B"):
        choose_tokenizer("auto", 50277, tmp_path / "RWKV-4-Pile-169M.pth")
    with pytest.raises(InvalidParameterError, match="65530 ids but the model's vocabulary has 512"):
        choose_tokenizer("world", 512, tmp_path / "x.pth")
    with pytest.raises(InvalidParameterError, match="512 ids but the model's vocabulary has 65536"):
        choose_tokenizer(str(bpe_json), 65536, tmp_path / "x.pth")
    with pytest.raises(NotFoundError):
        choose_tokenizer(str(tmp_path / "missing.json"), 512, tmp_path / "x.pth")
    # padding rules: the real pairs fit, a different tokenizer does not
    assert fits(65530, 65536) and fits(50277, 50277) and fits(50277, 50304)
    assert not fits(50277, 65536) and not fits(65530, 50277) and not fits(512, 50304)
