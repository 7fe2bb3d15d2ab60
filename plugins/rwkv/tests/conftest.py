"""Shared fixtures of the RWKV plugin tests: tiny checkpoints in the real layouts, written once
per session, and references built straight from the rwkv package.

Models: RWKV-4 with a 512-id byte-level BPE tokenizer trained here (standing in for the Pile
20B tokenizer, saved as ``20B_tokenizer.json`` next to the checkpoint like ChatRWKV keeps it);
RWKV-5.2, 6 and 7 with the World vocabulary (65536 rows). All 2 layers x 64, head size 16.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import pytest
from openllm_hub_rwkv.tiny import WORLD_VOCAB, build_bpe_tokenizer, build_checkpoint

VERSIONS = ("4", "5.2", "6", "7")
BPE_VOCAB = 512


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = str(Path(__file__).parent)
    for item in items:
        if str(item.path).startswith(here):  # the rwkv package's TorchScript calls are deprecated in torch 2.13
            item.add_marker(pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning"))


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """One intra-op thread: the models are tiny, and on a shared 2-core machine two OpenMP
    threads spin-wait on each other (measured 10x slower per token)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _isolated_config(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENLLM_HUB_CONFIG_DIR", str(tmp_path_factory.mktemp("config")))
    monkeypatch.setenv("OPENLLM_HUB_NO_PROGRESS", "1")


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """version -> checkpoint path (each in its own folder)."""
    os.environ.pop("RWKV_V7_ON", None)  # the references below import the package's defaults
    root = tmp_path_factory.mktemp("rwkv")
    out: dict[str, Path] = {}
    for v in VERSIONS:
        folder = root / f"v{v}"
        folder.mkdir()
        if v == "4":
            build_bpe_tokenizer(folder / "20B_tokenizer.json", vocab_size=BPE_VOCAB)
        out[v] = build_checkpoint(folder / f"RWKV-{v}-tiny-ctx1024.pth", v,  # type: ignore[arg-type]
                                  vocab_size=BPE_VOCAB if v == "4" else WORLD_VOCAB, seed=int(float(v) * 10))
    return out


@pytest.fixture(scope="session")
def bpe_json(ckpt: dict[str, Path]) -> Path:
    return ckpt["4"].parent / "20B_tokenizer.json"


_LOADED: dict[tuple[Any, ...], Any] = {}


@pytest.fixture(scope="session")
def shared_model(ckpt: dict[str, Path]) -> Iterator[Callable[..., Any]]:
    """``shared_model(version, **options)``: one loaded model per (version, options) for the
    session. Tests that use chat states call ``reset_state()`` first."""
    import openllm_hub

    def get(version: str, **options: Any) -> Any:
        key = (version, tuple(sorted(options.items())))
        model = _LOADED.get(key)
        if model is None or model.closed:
            model = openllm_hub.load(ckpt[version], device="cpu", **options)
            _LOADED[key] = model
        return model

    yield get
    for m in _LOADED.values():
        m.close()
    _LOADED.clear()


class PackageRef:
    """The rwkv package used directly, as ChatRWKV uses it: the independent side of the tests."""

    _v7: ModuleType | None = None
    _models: ClassVar[dict[tuple[str, str], Any]] = {}

    def v7_module(self) -> ModuleType:
        """model.py imported with RWKV_V7_ON=1 (its documented switch for RWKV-7), as a separate
        module so the default ``rwkv.model`` stays the RWKV-4/5/6 one."""
        if PackageRef._v7 is None:
            spec = importlib.util.find_spec("rwkv.model")
            assert spec is not None and spec.origin is not None
            copy = importlib.util.spec_from_file_location("_test_rwkv_model_v7", spec.origin)
            assert copy is not None and copy.loader is not None
            module = importlib.util.module_from_spec(copy)
            sys.modules["_test_rwkv_model_v7"] = module
            os.environ["RWKV_V7_ON"] = "1"
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    copy.loader.exec_module(module)
            finally:
                del os.environ["RWKV_V7_ON"]
            PackageRef._v7 = module
        return PackageRef._v7

    def model(self, path: Path, version: str, strategy: str = "cpu fp32") -> Any:
        """``rwkv.model.RWKV`` (``RWKV_x070`` for v7) on ``path`` as ChatRWKV builds it (cached:
        forward never changes the weights)."""
        key = (str(path), strategy)
        if key not in self._models:
            name = str(path)[: -len(".pth")]
            if version == "7":
                if strategy != "cpu fp32":  # RWKV_x070 keeps dtype/device in module globals
                    raise ValueError("the test reference runs RWKV-7 in cpu fp32 only")
                with contextlib.redirect_stdout(io.StringIO()):
                    self._models[key] = self.v7_module().RWKV_x070(name, strategy)
            else:
                from rwkv.model import RWKV

                self._models[key] = RWKV(name, strategy, verbose=False)
        return self._models[key]

    @staticmethod
    def logits(model: Any, ids: list[int], chunk: int = 256) -> Any:
        """Per-position logits, fed in chunks of ``chunk`` like the SDK does."""
        import torch

        rows, state = [], None
        for start in range(0, len(ids), chunk):
            part = ids[start : start + chunk]
            out, state = model.forward(part, state, full_output=True)
            rows.append(out.reshape(len(part), -1).float())
        return torch.cat(rows).numpy()


@pytest.fixture(scope="session")
def pkg() -> PackageRef:
    return PackageRef()
