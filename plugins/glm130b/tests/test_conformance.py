"""The SDK's conformance kit on a tiny GLM-130B-shaped checkpoint (TP=1 in process)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest

import openllm_hub
from openllm_hub.testing import ModelConformance


class TestGLM130BConformance(ModelConformance):
    path: ClassVar[Path]
    #: the tiny checkpoint's sentencepiece model normalizes as sentencepiece does by default
    #: (NFKC, whitespace runs collapsed, no leading space), so only texts that survive that
    roundtrip_texts: ClassVar[tuple[str, ...]] = ("Hello world", "中文测试,你好!", "emoji 🦙🚀 ok", "x = f(1) + 2")

    @pytest.fixture(autouse=True)
    def _checkpoint(self, tiny: Any) -> None:
        type(self).path = tiny.path

    def load_model(self) -> Any:
        return openllm_hub.load(self.path, device="cpu")
