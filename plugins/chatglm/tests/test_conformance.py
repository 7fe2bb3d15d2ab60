"""The core conformance kit against each ChatGLM version (and an INT4 load)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import pytest

import openllm_hub
from openllm_hub.core.model import Model
from openllm_hub.testing import ModelConformance


class _Tiny(ModelConformance):
    fixture = ""
    options: ClassVar[dict[str, object]] = {}
    folder: Path

    @pytest.fixture(autouse=True)
    def _folder(self, request: pytest.FixtureRequest) -> None:
        type(self).folder = request.getfixturevalue(self.fixture)

    def load_model(self) -> Model:
        return openllm_hub.load(self.folder, device="cpu", **self.options)


class TestChatGLM6B(_Tiny):
    fixture = "v1_dir"


class TestChatGLM2(_Tiny):
    fixture = "v2_dir"


class TestChatGLM3(_Tiny):
    fixture = "v3_dir"


class TestChatGLM2Int4(_Tiny):
    fixture = "v2_dir"
    options: ClassVar[dict[str, object]] = {"quantize": "int4"}


class TestChatGLM3GGUF(ModelConformance):
    """A converted ChatGLM3 GGUF on the shared llama.cpp engine (role tokens in chat)."""

    path: Path

    @pytest.fixture(autouse=True)
    def _path(self, make_gguf: Callable[[str, str], Path]) -> None:
        type(self).path = make_gguf("v3_dir", "f16")

    def load_model(self) -> Model:
        return openllm_hub.load(self.path, device="cpu", threads=1)


class TestChatGLM2Q4_0(_Tiny):
    """A checkpoint folder loaded with a llama.cpp type: GGUF made in the (test) cache, on llama.cpp."""

    fixture = "v2_dir"
    options: ClassVar[dict[str, object]] = {"quantize": "q4_0", "threads": 1}
