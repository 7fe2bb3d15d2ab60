"""llama.cpp tokenizes a converted GGUF exactly as sentencepiece tokenizes with tokenizer.model."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import gguf
import pytest
import sentencepiece as spm
from openllm_hub_llama.convert_gguf import write_gguf
from openllm_hub_llama.tokenizer import CONTROL, USER_DEFINED

TEXTS = [
    "Hello world",
    " leading space",
    "   three leading spaces and trailing   ",
    "Runs  of   spaces\n\n\nand\tnewlines\r\n\n",
    "\n\nstarts with newlines",
    "中文分词测试：你好，世界！",
    "日本語のテキストと한국어",
    "emoji 😀🎉👍🏽 and a family 👨‍👩‍👧‍👦",
    "def f(x):\n    return {'a': [1, 2, 3]}  # code\n",
    "Ünïcödé àccents, Ελληνικά, русский",
    "numbers 1234567890 3.14159 -42 1e-6",
    "<s> and </s> typed as text, <unk> too",
    "",
    " ",
    "a" * 50,
    "URL: https://example.com/path?q=1&r=%20",
    "\u200b zero width and \u00a0 nbsp",
]


def llama_cpp_vocab(path: Path) -> object:
    import llama_cpp

    return llama_cpp.Llama(str(path), vocab_only=True, verbose=False)


def test_llama_cpp_tokenizes_like_sentencepiece(tiny_gguf_factory: Callable[..., Path],
                                                tokenizer_model: Path) -> None:
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_model))
    llm = llama_cpp_vocab(tiny_gguf_factory("f32"))
    for text in TEXTS:
        expected = [sp.bos_id(), *sp.encode(text)]
        got = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)  # type: ignore[attr-defined]
        assert got == expected, text


def test_token_table_matches_sentencepiece(tiny_gguf_factory: Callable[..., Path], tokenizer_model: Path) -> None:
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_model))
    r = gguf.GGUFReader(tiny_gguf_factory("f32"))
    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    scores = r.fields["tokenizer.ggml.scores"].contents()
    types = r.fields["tokenizer.ggml.token_type"].contents()
    assert len(tokens) == sp.vocab_size() == 32000
    for i in (0, 1, 2, 3, 258, 259, 1000, 29871, 31999):
        assert tokens[i] == sp.IdToPiece(i)
        assert scores[i] == pytest.approx(sp.GetScore(i))
    T = gguf.TokenType
    assert types[0] == T.UNKNOWN and types[1] == types[2] == T.CONTROL
    assert all(types[i] == T.BYTE for i in range(3, 259))
    assert types[259] == T.NORMAL


def test_added_tokens_extend_the_vocabulary(tmp_path: Path, tiny_hf_factory: Callable[..., Path],
                                            tokenizer_model: Path) -> None:
    """added_tokens.json (user-defined) and tokenizer_config's added_tokens_decoder (special)
    become ids past the sentencepiece pieces; plain text still tokenizes like sentencepiece."""
    import shutil

    src = tmp_path / "hf"
    shutil.copytree(tiny_hf_factory(vocab_size=32002), src)
    (src / "added_tokens.json").write_text(json.dumps({"<pad>": 32000}))
    cfg = json.loads((src / "tokenizer_config.json").read_text())
    cfg["added_tokens_decoder"] = {"32001": {"content": "<|im_start|>", "special": True}}
    (src / "tokenizer_config.json").write_text(json.dumps(cfg))
    out = tmp_path / "added.gguf"
    write_gguf(src, out, "f32")
    r = gguf.GGUFReader(out)
    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    types = r.fields["tokenizer.ggml.token_type"].contents()
    assert len(tokens) == 32002
    assert (tokens[32000], types[32000]) == ("<pad>", USER_DEFINED)
    assert (tokens[32001], types[32001]) == ("<|im_start|>", CONTROL)
    assert types[1] == CONTROL and tokens[1] == "<s>"
    llm = llama_cpp_vocab(out)
    assert llm.tokenize(b"<|im_start|>", add_bos=False, special=True) == [32001]  # type: ignore[attr-defined]
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_model))
    for text in TEXTS[:6]:
        assert llm.tokenize(text.encode(), add_bos=True, special=False) == [1, *sp.encode(text)]  # type: ignore
