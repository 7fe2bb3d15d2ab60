"""`import openllm_hub` and registry loading stay free of engines."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "transformers", "llama_cpp", "rwkv", "safetensors", "sentencepiece", "gguf", "fastapi", "numpy")


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_import_is_light() -> None:
    mods = _modules_after("import openllm_hub")
    assert not mods & set(HEAVY), mods & set(HEAVY)


def test_loading_every_plugin_is_light() -> None:
    """Plugins are imported by the registry; none may pull an engine in at import time."""
    mods = _modules_after("from openllm_hub.core.registry import get_registry\nr = get_registry()\n"
                          "assert not r.broken(), [x.error for x in r.broken()]")
    assert not mods & set(HEAVY), mods & set(HEAVY)


def test_cli_help_is_light() -> None:
    mods = _modules_after("from openllm_hub.cli import build_parser\nbuild_parser()")
    assert not mods & set(HEAVY), mods & set(HEAVY)
