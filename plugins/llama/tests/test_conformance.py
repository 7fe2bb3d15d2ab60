"""The SDK's conformance kit (openllm_hub.testing) on both LLaMA engines, with tiny models."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import pytest

import openllm_hub
from openllm_hub.core.model import Model
from openllm_hub.testing import ModelConformance


@pytest.fixture(scope="module")
def _paths(tiny_hf_factory: Callable[..., Path], tiny_gguf_factory: Callable[..., Path],
           tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    hf = tiny_hf_factory(num_kv_heads=2)
    no_bos = shutil.copytree(hf, tmp_path_factory.mktemp("no-bos") / "hf")
    cfg = no_bos / "tokenizer_config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "add_bos_token": False}))
    return {"hf": hf, "gguf": tiny_gguf_factory("f32", num_kv_heads=2), "hf_no_bos": no_bos}


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


class TestTransformersNoBosConformance(_Paths, ModelConformance):
    """The same folder with ``add_bos_token: false``: an empty prompt has no ids, so the kit's
    empty-prompt check sees the core refuse it."""

    def load_model(self) -> Model:
        return openllm_hub.load(self.paths["hf_no_bos"], device="cpu", threads=1)

    def test_empty_prompt_has_no_ids(self) -> None:
        assert self._shared(self).tokenize("") == []  # so test_empty_prompt above checks the refusal
