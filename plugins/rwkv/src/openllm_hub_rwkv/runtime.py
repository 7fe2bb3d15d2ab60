"""Building ``rwkv.model.RWKV`` objects without the package's quirks reaching the user.

Facts from rwkv 0.8.32's ``model.py`` this module handles:

* Environment variables are read when ``rwkv.model`` is *imported*: ``RWKV_V7_ON=1`` replaces
  the name ``RWKV`` by the RWKV-7 class (the RWKV-4/5/6 class is then unreachable) and makes
  every class TorchScript; ``RWKV_JIT_ON`` picks TorchScript or plain modules;
  ``RWKV_CUDA_ON=1`` compiles CUDA kernels. So one import serves one configuration. This
  module executes the package's ``model.py`` as private module copies, one per
  configuration (``rwkv.model`` itself is never touched), with the variables set only
  while the copy is imported.
* ``RWKV.__init__`` reads ``os.environ["RWKV_JIT_ON"]`` and ``["RWKV_CUDA_ON"]`` (KeyError if
  absent) and ``RWKV.forward`` reads ``RWKV_CUDA_ON`` on every call, so those two stay set to
  the values the imported copies expect; CUDA kernels are therefore one choice per process.
* RWKV-7 keeps its device and dtype in module globals, so each RWKV-7 strategy gets its own
  module copy.
* The model path: RWKV-4/5/6 append ``.pth`` unless the name ends with it (and strip spaces);
  RWKV-7 always appends it. Files with other names are reached through a symlink ``model.pth``
  in a private temporary folder.
* Key order: RWKV-4/5/6 infer the version and head count from the key order (see
  :mod:`openllm_hub_rwkv.spec`); when the file's order would mislead them, a reordered copy
  is written to the temporary folder.
* Printing: loading prints progress (RWKV-7 always does); it is silenced.
* ``RWKV.__init__`` calls ``gc.collect()`` after every layer, which costs a full collection of
  the process's objects each time (seconds per load in a process holding many objects, e.g. a
  server). The tensors it frees have no reference cycles, so plain reference counting frees
  them just as early; the private copies get a ``gc`` whose ``collect`` does nothing.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import shutil
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from openllm_hub.plugin import IncompatibleDeviceError, NotFoundError
from openllm_hub_rwkv.checkpoint import TensorMeta
from openllm_hub_rwkv.spec import Arch, package_order, package_reads_correctly
from openllm_hub_rwkv.strategy import Strategy

_LOCK = threading.RLock()
_MODULES: dict[tuple[Any, ...], ModuleType] = {}
_CUDA_KERNELS: bool | None = None


@contextlib.contextmanager
def _env(**values: str | None) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, old in saved.items():
            if old is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = old


def package_module(*, v7: bool, jit: bool, cuda_kernels: bool, v7_strategy: str | None = None) -> ModuleType:
    """A private copy of ``rwkv.model`` imported with the given switches (cached)."""
    global _CUDA_KERNELS
    key = (v7, jit, cuda_kernels, v7_strategy if v7 else None)
    with _LOCK:
        if key in _MODULES:
            return _MODULES[key]
        if _CUDA_KERNELS is not None and _CUDA_KERNELS != cuda_kernels:
            raise IncompatibleDeviceError(
                f"this process already runs RWKV with CUDA kernels {'on' if _CUDA_KERNELS else 'off'}",
                where="cuda_kernels", fix=f"load every RWKV model of this process with cuda_kernels={_CUDA_KERNELS}")
        spec = importlib.util.find_spec("rwkv.model")
        if spec is None or spec.origin is None:
            raise NotFoundError("the rwkv package is not installed", where="engine rwkv",
                                fix="pip install rwkv==0.8.32")
        name = f"openllm_hub_rwkv._pkg{len(_MODULES)}_{'v7' if v7 else 'v4to6'}"
        copy_spec = importlib.util.spec_from_file_location(name, spec.origin)
        assert copy_spec is not None and copy_spec.loader is not None
        module = importlib.util.module_from_spec(copy_spec)
        sys.modules[name] = module
        try:
            with _env(RWKV_V7_ON="1" if v7 else None, RWKV_JIT_ON="1" if jit else "0",
                      RWKV_CUDA_ON="1" if cuda_kernels else "0", RWKV_DML_ON=None, RWKV_DE_VERSION=None), \
                    contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script is deprecated
                copy_spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        module.gc = _NoCollect()  # type: ignore[attr-defined]
        # read again by RWKV.__init__/forward at run time (see the module docstring)
        os.environ["RWKV_CUDA_ON"] = "1" if cuda_kernels else "0"
        _CUDA_KERNELS = cuda_kernels
        _MODULES[key] = module
        return module


class _NoCollect:
    """Stands in for the ``gc`` module inside the private copies (see the module docstring)."""

    @staticmethod
    def collect(generation: int = 2) -> int:
        return 0


class Workdir:
    """A private temporary folder for symlinks/reordered copies, removed on :meth:`close`."""

    def __init__(self) -> None:
        self.path: Path | None = None

    def make(self) -> Path:
        if self.path is None:
            self.path = Path(tempfile.mkdtemp(prefix="openllm-hub-rwkv-"))
        return self.path

    def close(self) -> None:
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            self.path = None


def model_name_for_package(path: Path, arch: Arch, tensors: dict[str, TensorMeta], workdir: Workdir) -> str:
    """The name to hand ``RWKV(model=...)`` so it opens ``path`` and reads it correctly."""
    names = list(tensors)
    if not package_reads_correctly(arch, names, tensors):
        import torch

        from openllm_hub.plugin import load_torch_checkpoint

        sd = load_torch_checkpoint(path)
        ordered = {k: sd[k] for k in package_order(list(sd))}
        target = workdir.make() / "model.pth"
        torch.save(ordered, target)
        return str(target)[: -len(".pth")]
    resolved = path.resolve()
    plain = resolved.name.endswith(".pth") and resolved.name == resolved.name.strip() and \
        str(resolved) == str(resolved).strip()
    if plain:
        return str(resolved)[: -len(".pth")]
    link = workdir.make() / "model.pth"
    if not link.exists():
        link.symlink_to(resolved)
    return str(link)[: -len(".pth")]


def build_package_model(path: Path, arch: Arch, tensors: dict[str, TensorMeta], strategy: Strategy, *,
                        jit: bool, cuda_kernels: bool, workdir: Workdir) -> Any:
    """Construct the package's model object for ``path`` under ``strategy``."""
    if strategy.uses_cuda:
        import torch

        if not torch.cuda.is_available():
            raise IncompatibleDeviceError(f"strategy '{strategy}' needs CUDA, but torch sees no CUDA GPU",
                                          where="strategy", fix="use a CPU strategy such as 'cpu fp32'")
    if any(s.device == "mps" for s in strategy.segments):
        import torch

        if not torch.backends.mps.is_available():
            raise IncompatibleDeviceError("strategy uses mps, which this torch cannot use", where="strategy",
                                          fix="use 'cpu fp32'")
    v7 = arch.version == "7"
    module = package_module(v7=v7, jit=jit, cuda_kernels=cuda_kernels, v7_strategy=str(strategy) if v7 else None)
    name = model_name_for_package(path, arch, tensors, workdir)
    with _LOCK, contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script_method is deprecated
        os.environ["RWKV_JIT_ON"] = "1" if jit else "0"
        if v7:
            return module.RWKV_x070(name, str(strategy))
        return module.RWKV(name, str(strategy), verbose=False)
