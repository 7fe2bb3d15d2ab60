"""Shared fixtures: tiny ChatGLM checkpoints in the real layout, built once per session.

The released tokenizer files cannot be downloaded, so the tokenizers are trained here with
the sentencepiece trainer under ChatGLM's conventions (see ``openllm_hub_chatglm.tiny``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from openllm_hub_chatglm.tiny import build_checkpoint, train_tokenizer

#: Test-only modules (reference oracles, fixture builders) sit next to the tests instead of in the
#: installed package; pytest's importlib mode keeps this folder off sys.path, so put it there for them.
TESTS_DIR = str(Path(__file__).resolve().parent)
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """GGUF files made on demand (``quantize="q4_0"``) go to a temporary cache, not the user's."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OPENLLM_HUB_CACHE_DIR", str(cache))
        mp.setenv("OPENLLM_HUB_NO_PROGRESS", "1")
        yield cache


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """The tiny models run fastest on one thread; on a shared 2-core CI machine torch's
    default (one thread per core) spends most of its time waiting for the other thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tokenizer_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A trained ice_text.model (v1) and tokenizer.model (v2/v3)."""
    root = tmp_path_factory.mktemp("tokenizers")
    return {"chatglm": train_tokenizer(root / "ice_text.model", "chatglm"),
            "chatglm2": train_tokenizer(root / "tokenizer.model", "chatglm2")}


@pytest.fixture(scope="session")
def make_ckpt(tmp_path_factory: pytest.TempPathFactory, tokenizer_files: dict[str, Path]) -> Callable[..., Path]:
    """Build (and cache) a tiny checkpoint: make_ckpt(variant, **build_checkpoint options)."""
    cache: dict[tuple[object, ...], Path] = {}

    def make(variant: str, **kw: object) -> Path:
        key = (variant, *sorted(kw.items()))
        if key not in cache:
            folder = tmp_path_factory.mktemp(variant)
            tok = tokenizer_files["chatglm" if variant == "chatglm" else "chatglm2"]
            cache[key] = build_checkpoint(folder, variant, tokenizer=tok, **kw)  # type: ignore[arg-type]
        return cache[key]

    return make


@pytest.fixture(scope="session")
def v1_dir(make_ckpt: Callable[..., Path]) -> Path:
    return make_ckpt("chatglm", seed=1, shards=2, fmt="bin")


@pytest.fixture(scope="session")
def v2_dir(make_ckpt: Callable[..., Path]) -> Path:
    return make_ckpt("chatglm2", seed=2, shards=3)


@pytest.fixture(scope="session")
def v3_dir(make_ckpt: Callable[..., Path]) -> Path:
    return make_ckpt("chatglm3", seed=3, shards=2, fmt="bin")


@pytest.fixture(scope="session")
def make_gguf(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Callable[[str, str], Path]:
    """Convert (once per session) a tiny checkpoint fixture to GGUF: make_gguf("v2_dir", "f32")."""
    import openllm_hub

    cache: dict[tuple[str, str], Path] = {}

    def make(fixture: str, outtype: str) -> Path:
        if (fixture, outtype) not in cache:
            src = request.getfixturevalue(fixture)
            dst = tmp_path_factory.mktemp("gguf") / f"{fixture}-{outtype}.gguf"
            cache[(fixture, outtype)] = openllm_hub.convert(src, dst, to="gguf", outtype=outtype, progress=False).path
        return cache[(fixture, outtype)]

    return make
