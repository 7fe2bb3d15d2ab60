"""Shared fixtures of the LLaMA plugin tests: tiny random checkpoints in the real formats.

Builders are session-scoped and cached by their arguments, so each distinct tiny model is
written once per test session, whichever test asks first.
"""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from openllm_hub_llama.tiny import fixture_tokenizer, make_tiny_hf, make_tiny_meta

#: Test-only modules (reference oracles, fixture builders) sit next to the tests instead of in the
#: installed package; pytest's importlib mode keeps this folder off sys.path, so put it there for them.
TESTS_DIR = str(Path(__file__).resolve().parent)
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)


@pytest.fixture(scope="session")
def tokenizer_model() -> Path:
    """The real LLaMA sentencepiece tokenizer (32,000 pieces) the tiny builders ship with, see
    openllm_hub_llama/data/README.md."""
    return fixture_tokenizer()


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


# ---- engines, quantizer (helper L2) --------------------------------------------------------------
def _read_gguf_tensor_infos(path: Path) -> tuple[list[tuple[str, tuple[int, ...], int, int]], int, int]:
    """(name, dims, ggml type, offset) of every tensor, the data section's start and the
    alignment, read straight from the GGUF layout (independent of the plugin's readers)."""
    data = path.read_bytes()
    pos = 4
    _version, n_tensors, n_kv = struct.unpack_from("<IQQ", data, pos)
    pos += 20
    fixed = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def skip(vtype: int) -> None:
        nonlocal pos
        if vtype in fixed:
            pos += fixed[vtype]
        elif vtype == 8:
            (n,) = struct.unpack_from("<Q", data, pos)
            pos += 8 + n
        elif vtype == 9:
            etype, n = struct.unpack_from("<IQ", data, pos)
            pos += 12
            if etype in fixed:
                pos += fixed[etype] * n
            else:
                for _ in range(n):
                    skip(etype)
        else:
            raise AssertionError(f"unknown GGUF value type {vtype}")

    alignment = 32
    for _ in range(n_kv):
        (n,) = struct.unpack_from("<Q", data, pos)
        key = data[pos + 8 : pos + 8 + n].decode()
        pos += 8 + n
        (vtype,) = struct.unpack_from("<I", data, pos)
        pos += 4
        if key == "general.alignment":
            (alignment,) = struct.unpack_from("<I", data, pos)
        skip(vtype)
    infos = []
    for _ in range(n_tensors):
        (n,) = struct.unpack_from("<Q", data, pos)
        name = data[pos + 8 : pos + 8 + n].decode()
        pos += 8 + n
        (nd,) = struct.unpack_from("<I", data, pos)
        dims = struct.unpack_from(f"<{nd}Q", data, pos + 4)
        pos += 4 + 8 * nd
        ttype, offset = struct.unpack_from("<IQ", data, pos)
        pos += 12
        infos.append((name, tuple(dims), ttype, offset))
    start = (pos + alignment - 1) // alignment * alignment
    return infos, start, alignment


@pytest.fixture(scope="session")
def gguf_tensor_infos() -> Callable[[Path], tuple[list[tuple[str, tuple[int, ...], int, int]], int, int]]:
    """``f(path) -> ([(name, dims, ggml type, offset)], data start, alignment)`` of a GGUF file."""
    return _read_gguf_tensor_infos
