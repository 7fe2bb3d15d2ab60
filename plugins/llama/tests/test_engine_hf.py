"""The transformers engine: weights files, dtypes, KV-cached generation, clear errors."""

from __future__ import annotations

import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import openllm_hub
from openllm_hub.core.convert import VERIFY_PROMPT
from openllm_hub.errors import CorruptFileError, NotFoundError, UnsafeCheckpointError


def test_info_and_generation_with_the_kv_cache(tiny_hf_factory: Callable[..., Path]) -> None:
    """Cached generation (one token per step over a DynamicCache) picks the argmax of a full
    forward pass over the whole sequence at every step."""
    folder = tiny_hf_factory(num_kv_heads=2)
    with openllm_hub.load(folder, device="cpu", threads=1) as m:
        info = m.info
        assert (info.family, info.format, info.engine, info.device, info.dtype) == (
            "llama", "hf", "transformers", "cpu", "fp32")
        assert info.extra["n_kv_heads"] == 2 and info.extra["tied_embeddings"] is False
        assert info.context_length == 2048 and info.vocab_size == 32000
        ids = m.tokenize(VERIFY_PROMPT)
        out = m.generate(VERIFY_PROMPT, max_new_tokens=8, temperature=0.0, repeat_penalty=1.0)
        seq = list(ids)
        for token in out.token_ids:
            assert int(np.argmax(m.logits(seq)[-1])) == token
            seq.append(token)


def test_sharded_bin_equals_safetensors(tiny_hf_factory: Callable[..., Path]) -> None:
    """The same weights as two pytorch_model-0000N-of-00002.bin shards (read with
    weights_only) and as one safetensors file give bit-identical logits."""
    a = tiny_hf_factory(tie_word_embeddings=True)
    b = tiny_hf_factory(tie_word_embeddings=True, fmt="bin", shards=2)
    assert (b / "pytorch_model.bin.index.json").is_file()
    with openllm_hub.load(a, device="cpu", threads=1) as ma, openllm_hub.load(b, device="cpu", threads=1) as mb:
        assert ma.info.extra["tied_embeddings"] is True
        ids = ma.tokenize(VERIFY_PROMPT)
        assert np.array_equal(ma.logits(ids), mb.logits(ids))


def test_bf16(tiny_hf_factory: Callable[..., Path]) -> None:
    """dtype=bf16 computes in bfloat16 (8-bit mantissa, ~4e-3 relative rounding per step):
    within 1e-1 of the logit range of the float32 run on the same bf16-stored weights
    (measured 3.7e-2 on this model; a dtype mix-up or garbage output is of order 1)."""
    folder = tiny_hf_factory(dtype="bfloat16")
    with openllm_hub.load(folder, device="cpu", threads=1, dtype="bf16") as m16, \
            openllm_hub.load(folder, device="cpu", threads=1) as m32:
        assert m16.info.dtype == "bf16" and m32.info.dtype == "fp32"
        ids = m32.tokenize(VERIFY_PROMPT)
        ref, got = m32.logits(ids), m16.logits(ids)
        assert got.dtype == np.float32
        assert float(np.abs(got - ref).max()) < 1e-1 * float(ref.max() - ref.min())


# ---- bad input ---------------------------------------------------------------------------------
def _copy(folder: Path, tmp_path: Path) -> Path:
    out = tmp_path / "model"
    shutil.copytree(folder, out)
    return out


def test_missing_tokenizer(tiny_hf_factory: Callable[..., Path], tmp_path: Path) -> None:
    folder = _copy(tiny_hf_factory(), tmp_path)
    (folder / "tokenizer.model").unlink()
    with pytest.raises(NotFoundError, match=r"tokenizer\.model"):
        openllm_hub.load(folder, device="cpu")


def test_vocabulary_smaller_than_the_tokenizer(tiny_hf_factory: Callable[..., Path]) -> None:
    folder = tiny_hf_factory(vocab_size=31000)
    with pytest.raises(CorruptFileError, match="32000 pieces but the embedding has 31000 rows"):
        openllm_hub.load(folder, device="cpu")


def test_truncated_safetensors(tiny_hf_factory: Callable[..., Path], tmp_path: Path) -> None:
    folder = _copy(tiny_hf_factory(), tmp_path)
    f = folder / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CorruptFileError, match="past the end"):
        openllm_hub.load(folder, device="cpu")


class _Payload:
    """Unpickling this would call print(): a stand-in for code a malicious checkpoint runs."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("code from a checkpoint ran",))


def test_pickle_with_code_is_refused(tiny_hf_factory: Callable[..., Path], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    folder = _copy(tiny_hf_factory(fmt="bin"), tmp_path)
    good = folder / "pytorch_model.bin"
    state = torch.load(good, weights_only=True)
    torch.save({**state, "evil": _Payload()}, good)
    assert zipfile.is_zipfile(good)
    with pytest.raises(UnsafeCheckpointError):
        openllm_hub.load(folder, device="cpu")
    assert "code from a checkpoint ran" not in capsys.readouterr().out
