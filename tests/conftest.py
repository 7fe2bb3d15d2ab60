"""Shared fixtures for core tests: isolated config/cache folders, the example model, a tiny LLaMA."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

#: Test-only helper modules (tiny model files, live servers, wrapped models) sit in tests/helpers/
#: instead of in the installed package; pytest's importlib mode keeps that folder off sys.path, so put
#: it there for the test modules (``from live_server import ...``). Parent conftests load first, so
#: tests/server/conftest.py and every test module below tests/ can import them.
HELPERS_DIR = str(Path(__file__).resolve().parent / "helpers")
if HELPERS_DIR not in sys.path:
    sys.path.insert(0, HELPERS_DIR)


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENLLM_HUB_CONFIG_DIR", str(tmp_path_factory.mktemp("config")))
    monkeypatch.setenv("OPENLLM_HUB_NO_PROGRESS", "1")


@pytest.fixture(scope="session")
def bigram_path() -> Path:
    from openllm_hub_bigram import BUILTIN_MODEL

    return BUILTIN_MODEL


@pytest.fixture()
def bigram(bigram_path: Path) -> Iterator[object]:
    import openllm_hub

    with openllm_hub.load(bigram_path, device="cpu") as m:
        yield m


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny random HF LLaMA folder (the real 32,000-piece tokenizer) and its f32 GGUF, once per module."""
    from template_models import tiny_llama_files

    return tiny_llama_files(tmp_path_factory.mktemp("tiny-llama"))
