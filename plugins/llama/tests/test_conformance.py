"""The SDK's conformance kit (openllm_hub.testing) on both LLaMA engines, with tiny models."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import pytest

import openllm_hub
from openllm_hub.core.model import Model
from openllm_hub.testing import ModelConformance


@pytest.fixture(scope="module")
def _paths(tiny_hf_factory: Callable[..., Path], tiny_gguf_factory: Callable[..., Path]) -> dict[str, Path]:
    return {"hf": tiny_hf_factory(num_kv_heads=2), "gguf": tiny_gguf_factory("f32", num_kv_heads=2)}


class _Paths:
    paths: ClassVar[dict[str, Path]] = {}

    @pytest.fixture(autouse=True)
    def _remember(self, _paths: dict[str, Path]) -> None:
        type(self).paths = _paths


class TestGGUFEngineConformance(_Paths, ModelConformance):
    """llama.cpp on a GGUF file."""

    def load_model(self) -> Model:
        return openllm_hub.load(self.paths["gguf"], device="cpu", threads=1)


class TestTransformersEngineConformance(_Paths, ModelConformance):
    """transformers on the HF folder the GGUF file was converted from."""

    def load_model(self) -> Model:
        return openllm_hub.load(self.paths["hf"], device="cpu", threads=1)
