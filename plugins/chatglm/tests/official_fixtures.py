"""Reading the official-code fixtures under ``data/`` (``official_glm1``, ``official_glm2``, see
their READMEs) as the parity and embedding tests do: the stored reference arrays, the fixture
checkpoints loaded in fp32, and ``official_glm2/make_fixture.py`` (whose ``load_reference`` builds
transformers' model of a checkpoint). Test-only: the fixtures are not part of the plugin.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from openllm_hub_chatglm.engine_torch import ChatGLMModel

import openllm_hub

DATA = Path(__file__).parent / "data"
GLM1, GLM2 = DATA / "official_glm1", DATA / "official_glm2"


def read_reference(fixture: Path) -> dict[str, Any]:
    """Every array of ``fixture``'s ``reference_logits.npz``, read into memory."""
    with np.load(fixture / "reference_logits.npz") as data:
        return {k: data[k] for k in data.files}


def load_fp32(folder: Path) -> ChatGLMModel:
    """The fixture checkpoint ``folder`` on the CPU in fp32 (the dtype the references were made in)."""
    model = openllm_hub.load(folder, device="cpu", dtype="fp32")
    assert isinstance(model, ChatGLMModel)
    return model


@contextmanager
def fp32_models(fixture: Path, names: Iterable[str]) -> Iterator[dict[str, ChatGLMModel]]:
    """name -> :func:`load_fp32` of ``fixture / name``, each closed on exit."""
    with ExitStack() as stack:
        yield {name: stack.enter_context(load_fp32(fixture / name)) for name in sorted(set(names))}


def glm2_fixture_module() -> Any:
    """``official_glm2/make_fixture.py`` as a module (it is a script, not a package)."""
    spec = importlib.util.spec_from_file_location("make_official_glm2_fixture", GLM2 / "make_fixture.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
