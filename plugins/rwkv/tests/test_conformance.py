"""The SDK's conformance kit on RWKV models: World tokenizer (5.2, 7), the 20B-style BPE
tokenizer (RWKV-4), and the transformers engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest

import openllm_hub
from openllm_hub.testing import ModelConformance


class _RwkvKit(ModelConformance):
    version: ClassVar[str] = "5.2"
    options: ClassVar[dict[str, Any]] = {}
    path: ClassVar[Path]

    @pytest.fixture(autouse=True)
    def _checkpoint(self, ckpt: dict[str, Path]) -> None:
        type(self).path = ckpt[self.version]

    def load_model(self) -> Any:
        return openllm_hub.load(self.path, device="cpu", **self.options)


class TestRwkv52World(_RwkvKit):
    version = "5.2"


class TestRwkv7World(_RwkvKit):
    version = "7"


class TestRwkv4Bpe(_RwkvKit):
    version = "4"


class TestRwkv4Transformers(_RwkvKit):
    version = "4"
    options: ClassVar[dict[str, Any]] = {"engine": "transformers"}
