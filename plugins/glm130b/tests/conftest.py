"""Shared fixtures: tiny GLM-130B-shaped SAT checkpoints (real layout, real sentencepiece
tokenizers) built once per session, and a TP=1 model over the mp=2 one."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from openllm_hub_glm130b.spec import GLMConfig, read_config
from openllm_hub_glm130b.tiny import build_tiny, train_char_tokenizer, train_tokenizer

#: Test-only modules (reference oracles, fixture builders) sit next to the tests instead of in the
#: installed package; pytest's importlib mode keeps this folder off sys.path, so put it there for them.
TESTS_DIR = str(Path(__file__).resolve().parent)
#: ... and the repository's shared test helpers (tests/helpers: live servers), as tests/conftest.py does.
HELPERS_DIR = str(Path(__file__).resolve().parents[3] / "tests" / "helpers")
for folder in (HELPERS_DIR, TESTS_DIR):
    if folder not in sys.path:
        sys.path.insert(0, folder)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """The tiny models are far too small for intra-op threads to pay off, and on a loaded
    machine OpenMP's spinning threads make every op ~10x slower. Restored after each module,
    so other plugins' tests keep their settings."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@dataclass(frozen=True)
class Tiny:
    path: Path
    full: dict[str, Any]  # the unpartitioned weights the shards were cut from
    config: GLMConfig


@pytest.fixture(scope="session")
def tokenizer_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.model")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory, tokenizer_file: Path) -> Tiny:
    """3 layers, hidden 64, 4 heads, GeGLU inner 96, vocab 328, saved as mp=2 shards."""
    path, full = build_tiny(tmp_path_factory.mktemp("ckpt") / "mp2", tp=2, tokenizer=tokenizer_file)
    return Tiny(path, full, read_config(path))


@pytest.fixture(scope="session")
def smooth(tmp_path_factory: pytest.TempPathFactory, tokenizer_file: Path) -> Tiny:
    """Like ``tiny`` but with gain-1 weights: a non-chaotic network (as trained ones are), where
    a small weight perturbation makes a proportionate logit change; for quantization bounds."""
    path, full = build_tiny(tmp_path_factory.mktemp("ckpt") / "smooth", tp=2, tokenizer=tokenizer_file, gain=1.0)
    return Tiny(path, full, read_config(path))


@pytest.fixture(scope="session")
def small_vocab(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    """Vocabulary of 16 (a character tokenizer over 'ab' plus GLM's commands), for enumeration."""
    tok = train_char_tokenizer(tmp_path_factory.mktemp("chartok") / "tokenizer.model")
    path, full = build_tiny(tmp_path_factory.mktemp("ckpt") / "small", tp=1, tokenizer=tok, hidden=32, heads=4,
                            inner=48, layers=2)
    return Tiny(path, full, read_config(path))


@pytest.fixture(scope="session")
def model(tiny: Tiny) -> Iterator[Any]:
    from openllm_hub import load

    with load(tiny.path, device="cpu") as m:
        yield m
