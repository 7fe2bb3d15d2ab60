"""The shared sentencepiece trainer: reproducible models, only the given settings recorded."""

from __future__ import annotations

import io
import random
from pathlib import Path

import sentencepiece as spm

from openllm_hub.core.io import TMP_MARK
from openllm_hub.engines.spm_train import LLAMA_CONVENTIONS, train_sentencepiece, train_sentencepiece_file


def _lines() -> list[str]:
    rng = random.Random(0)
    words = "the cat sat on a mat and 42 dogs ran 7 times".split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 9))) for _ in range(300)]


def test_llama_conventions_and_symbols(tmp_path: Path) -> None:
    out = train_sentencepiece_file(tmp_path / "tok.model", _lines(), vocab_size=300, **LLAMA_CONVENTIONS,
                                   user_defined_symbols=["<n>"], control_symbols=["[gMASK]"], hard_vocab_limit=False)
    assert [p.name for p in tmp_path.iterdir()] == ["tok.model"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TMP_MARK)]
    sp = spm.SentencePieceProcessor(model_file=str(out))
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, -1)
    assert sp.is_control(sp.piece_to_id("[gMASK]"))
    assert sp.encode("<n>", out_type=str)[-1] == "<n>"
    assert sp.decode(sp.encode("héllo 123\n")) == "héllo 123\n"  # byte fallback, identity normalisation
    assert [p.strip("\u2581") for p in sp.encode("42", out_type=str) if p.strip("\u2581")] == ["4", "2"]  # split


def test_same_input_same_bytes() -> None:
    a = train_sentencepiece(_lines(), vocab_size=40, model_type="char", character_coverage=1.0)
    b = train_sentencepiece(_lines(), vocab_size=40, model_type="char", character_coverage=1.0)
    assert a == b


def test_only_given_settings_are_passed() -> None:
    """The model file records every flag set explicitly, so the helper must add none of its own:
    its bytes equal a direct trainer call with the same flags."""
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(_lines()), model_writer=buf, vocab_size=40,
                                   model_type="char", byte_fallback=False, minloglevel=2)
    assert train_sentencepiece(_lines(), vocab_size=40, model_type="char", byte_fallback=False) == buf.getvalue()
    assert train_sentencepiece(_lines(), vocab_size=40, model_type="char") != buf.getvalue()
