"""Shared fixtures for core tests: isolated config/cache folders and the example model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


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
