"""Shared fixtures of the LLaMA plugin tests: tiny random checkpoints in the real formats.

Builders are session-scoped and cached by their arguments, so each distinct tiny model is
written once per test session, whichever test asks first.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from openllm_hub_llama.tiny import make_tiny_hf, make_tiny_meta

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def tokenizer_model() -> Path:
    """The real LLaMA sentencepiece tokenizer (32,000 pieces), see fixtures/README.md."""
    return FIXTURES / "llama-spm-tokenizer.model"


def _key(kwargs: dict[str, Any]) -> str:
    return json.dumps(kwargs, sort_keys=True, default=str)


@pytest.fixture(scope="session")
def tiny_hf_factory(tmp_path_factory: pytest.TempPathFactory, tokenizer_model: Path) -> Callable[..., Path]:
    """``factory(**make_tiny_hf kwargs) -> folder``; the same kwargs give the same (cached) folder."""
    made: dict[str, Path] = {}

    def factory(**kwargs: Any) -> Path:
        key = _key(kwargs)
        if key not in made:
            kwargs.setdefault("tokenizer_model", tokenizer_model)
            made[key] = make_tiny_hf(tmp_path_factory.mktemp("tiny-hf"), **kwargs)
        return made[key]

    return factory


@pytest.fixture(scope="session")
def tiny_meta_factory(tmp_path_factory: pytest.TempPathFactory,
                      tokenizer_model: Path) -> Callable[..., tuple[Path, Path]]:
    """``factory(**make_tiny_meta kwargs) -> (meta folder, HF twin folder with the same weights)``."""
    made: dict[str, tuple[Path, Path]] = {}

    def factory(**kwargs: Any) -> tuple[Path, Path]:
        key = _key(kwargs)
        if key not in made:
            kwargs.setdefault("tokenizer_model", tokenizer_model)
            base = tmp_path_factory.mktemp("tiny-meta")
            make_tiny_meta(base / "meta", hf_twin=base / "hf", **kwargs)
            made[key] = (base / "meta", base / "hf")
        return made[key]

    return factory


@pytest.fixture(scope="session")
def tiny_gguf_factory(tmp_path_factory: pytest.TempPathFactory,
                      tiny_hf_factory: Callable[..., Path]) -> Callable[..., Path]:
    """``factory(outtype="f32", **make_tiny_hf kwargs) -> .gguf`` converted by our hf -> gguf
    converter (cached per arguments)."""
    from openllm_hub_llama.convert_gguf import write_gguf

    made: dict[str, Path] = {}

    def factory(outtype: str = "f32", **kwargs: Any) -> Path:
        key = outtype + _key(kwargs)
        if key not in made:
            out = tmp_path_factory.mktemp("tiny-gguf") / f"tiny-{outtype}.gguf"
            write_gguf(tiny_hf_factory(**kwargs), out, outtype)
            made[key] = out
        return made[key]

    return factory


@pytest.fixture(scope="session")
def tiny_hf(tiny_hf_factory: Callable[..., Path]) -> Path:
    """The default tiny LLaMA (MHA, untied, f32, one safetensors file)."""
    return tiny_hf_factory()
