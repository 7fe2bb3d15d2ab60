"""Placement follows the engine that will run: an HF folder sent to llama.cpp is placed with
the GGUF device rows (llama.cpp's BLAS/GPU checks, gpu_layers), not the transformers ones."""

from __future__ import annotations

from pathlib import Path

import pytest

import openllm_hub
from openllm_hub.errors import IncompatibleDeviceError


def test_hf_on_llama_cpp_uses_gguf_device_rows(tiny_hf: Path) -> None:
    # transformers has no BLAS mode; llama.cpp does, and says whether this build has it
    with pytest.raises(IncompatibleDeviceError, match="no BLAS mode"):
        openllm_hub.load(tiny_hf, device="cpu:blas")
    try:
        model = openllm_hub.load(tiny_hf, device="cpu:blas", engine="llama.cpp")
    except IncompatibleDeviceError as exc:
        assert "llama-cpp-python has no BLAS" in str(exc)
    else:
        with model:
            assert model.info.engine == "llama.cpp"
    # transformers computes in the dtype asked for; llama.cpp in the GGUF file's own types
    with openllm_hub.load(tiny_hf, device="cpu", dtype="bf16") as m:
        assert m.info.engine == "transformers"
    with pytest.raises(IncompatibleDeviceError, match="dtype bf16 not supported"):
        openllm_hub.load(tiny_hf, device="cpu", dtype="bf16", engine="llama.cpp")
    with openllm_hub.load(tiny_hf, device="cpu", engine="llama.cpp") as m:
        assert m.info.engine == "llama.cpp" and m.info.format == "gguf"
