"""Devices: parsing a device spec, what this machine has, and where a model will run.

A spec is ``auto``, ``cpu``, ``cpu:blas``, ``cuda``, ``cuda:1`` or ``cuda:0,1``; options
(``dtype``, ``gpu_layers``, ``threads``) come as keywords. A family declares what it can run
on as :class:`DeviceSupport` rows; :func:`plan_placement` picks the best row that this
machine can serve and explains itself when none fits. Nothing here imports torch: GPUs are
found with ``nvidia-smi``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

from openllm_hub.errors import IncompatibleDeviceError, InvalidParameterError

DeviceKind = Literal["cpu", "cuda"]
DTYPES = ("fp32", "fp16", "bf16")
_DTYPE_ALIASES = {"float32": "fp32", "f32": "fp32", "float16": "fp16", "f16": "fp16", "half": "fp16",
                  "bfloat16": "bf16"}


@dataclass(frozen=True)
class DeviceSpec:
    """A parsed device request."""

    kind: Literal["auto", "cpu", "cuda"] = "auto"
    blas: bool = False
    gpu_ids: tuple[int, ...] = ()
    dtype: str | None = None
    gpu_layers: int | None = None
    threads: int | None = None

    def __str__(self) -> str:
        if self.kind == "cuda" and self.gpu_ids:
            return "cuda:" + ",".join(map(str, self.gpu_ids))
        return "cpu:blas" if self.blas else self.kind


_SPEC = re.compile(r"^(auto|cpu(:blas)?|cuda(:\d+(,\d+)*)?)$")


def normalize_dtype(dtype: str | None) -> str | None:
    if dtype is None:
        return None
    d = _DTYPE_ALIASES.get(dtype.lower(), dtype.lower())
    if d not in DTYPES:
        raise InvalidParameterError(f"unknown dtype {dtype!r}", where="device", fix=f"use one of {', '.join(DTYPES)}")
    return d


#: The most CPU threads any engine is given (with :func:`thread_limit`).
MAX_THREADS = 1024


def thread_limit() -> int:
    """The most CPU threads an engine is given here: 4x this machine's hardware threads (at
    least 64), at most :data:`MAX_THREADS`. More only oversubscribes the cores, and every
    thread costs a stack and buffers: ``-t 100000`` exhausts memory inside llama.cpp (it
    segfaults instead of failing cleanly) and makes torch's pools thrash."""
    return min(MAX_THREADS, max(64, 4 * (os.cpu_count() or 1)))


def check_threads(threads: int | None, where: str = "threads") -> None:
    """Refuse a thread count outside 1..:func:`thread_limit`, for every engine."""
    if threads is None:
        return
    limit = thread_limit()
    if not 1 <= threads <= limit:
        raise InvalidParameterError(
            f"threads={threads} is out of range on this machine ({os.cpu_count()} hardware threads)",
            where=where, fix=f"pass between 1 and {limit} threads (-t N)")


def parse_device(
    spec: str | DeviceSpec = "auto", *, dtype: str | None = None, gpu_layers: int | None = None,
    threads: int | None = None,
) -> DeviceSpec:
    """Parse ``spec`` plus keyword options into a :class:`DeviceSpec`."""
    if isinstance(spec, DeviceSpec):
        base = spec
    else:
        s = spec.strip().lower()
        if not _SPEC.match(s):
            raise InvalidParameterError(
                f"cannot parse device {spec!r}",
                where="device",
                fix="use auto, cpu, cpu:blas, cuda, cuda:N or cuda:N,M",
            )
        if s.startswith("cuda"):
            ids = tuple(int(x) for x in s.split(":", 1)[1].split(",")) if ":" in s else ()
            base = DeviceSpec(kind="cuda", gpu_ids=ids)
        elif s.startswith("cpu"):
            base = DeviceSpec(kind="cpu", blas=s == "cpu:blas")
        else:
            base = DeviceSpec()
    if gpu_layers is not None and gpu_layers < -1:
        raise InvalidParameterError("gpu_layers must be -1 (all), 0 or more", where="device")
    check_threads(threads, where="device")
    return DeviceSpec(
        kind=base.kind,
        blas=base.blas,
        gpu_ids=base.gpu_ids,
        dtype=normalize_dtype(dtype) or base.dtype,
        gpu_layers=base.gpu_layers if gpu_layers is None else gpu_layers,
        threads=base.threads if threads is None else threads,
    )


@dataclass(frozen=True)
class GPU:
    index: int
    name: str
    total_mib: int
    free_mib: int


@dataclass(frozen=True)
class Machine:
    """What this machine offers."""

    cpu_threads: int
    gpus: tuple[GPU, ...]
    gpu_note: str


def _nvidia_smi() -> tuple[tuple[GPU, ...], str]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return (), "no nvidia-smi on PATH, so no CUDA GPU is visible"
    try:
        out = subprocess.run(
            [exe, "--query-gpu=index,name,memory.total,memory.free", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError) as exc:
        return (), f"nvidia-smi failed: {exc}"
    gpus = []
    for line in out.strip().splitlines():
        idx, name, total, free = (x.strip() for x in line.split(","))
        gpus.append(GPU(int(idx), name, int(float(total)), int(float(free))))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        keep = [int(v) for v in visible.split(",") if v.strip().isdigit()]
        gpus = [GPU(i, g.name, g.total_mib, g.free_mib) for i, g in enumerate(g for g in gpus if g.index in keep)]
    return tuple(gpus), f"nvidia-smi reports {len(gpus)} GPU(s)"


@lru_cache(maxsize=1)
def probe_machine() -> Machine:
    """CPU threads and CUDA GPUs (with total and free memory) of this machine."""
    gpus, note = _nvidia_smi()
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return Machine(cpu_threads=threads, gpus=gpus, gpu_note=note)


@dataclass(frozen=True)
class DeviceSupport:
    """One way a family can run: a device kind, the dtypes it takes there, and for which
    formats. ``available`` answers (ok, reason) at load time, e.g. whether the installed
    llama.cpp was built with BLAS or GPU offload."""

    kind: DeviceKind
    dtypes: tuple[str, ...]
    formats: tuple[str, ...] | None = None
    blas: bool = False
    multi_gpu: bool = False
    partial_offload: bool = False
    available: Callable[[], tuple[bool, str]] | None = field(default=None, compare=False)

    def serves(self, fmt: str) -> bool:
        return self.formats is None or fmt in self.formats


@dataclass(frozen=True)
class Placement:
    """The decision: where and how a model runs, and why."""

    kind: DeviceKind
    dtype: str
    gpu_ids: tuple[int, ...] = ()
    blas: bool = False
    gpu_layers: int | None = None
    threads: int | None = None
    reason: str = ""

    def __str__(self) -> str:
        if self.kind == "cuda":
            dev = "cuda:" + ",".join(map(str, self.gpu_ids))
        else:
            dev = "cpu:blas" if self.blas else "cpu"
        return f"{dev} {self.dtype}"


def plan_placement(
    spec: DeviceSpec, supports: Sequence[DeviceSupport], fmt: str, machine: Machine | None = None
) -> Placement:
    """Pick the first support row (in the family's order of preference) that fits ``spec``
    and this machine. ``auto`` prefers CUDA when a GPU is visible. Raises
    :class:`IncompatibleDeviceError` listing why each row was rejected."""
    machine = machine or probe_machine()
    rows = [s for s in supports if s.serves(fmt)]
    if spec.kind == "auto":
        order: list[DeviceKind] = ["cuda", "cpu"] if machine.gpus else ["cpu"]
    else:
        order = [spec.kind]
    why: list[str] = []
    for kind in order:
        for row in rows:
            if row.kind != kind:
                continue
            if spec.blas and not row.blas:
                why.append(f"{kind}: this engine has no BLAS mode")
                continue
            dtype = spec.dtype or row.dtypes[0]
            if dtype not in row.dtypes:
                why.append(f"{kind}: dtype {dtype} not supported (supports {', '.join(row.dtypes)})")
                continue
            gpu_ids: tuple[int, ...] = ()
            if kind == "cuda":
                if not machine.gpus:
                    why.append(f"cuda: {machine.gpu_note}")
                    continue
                gpu_ids = spec.gpu_ids or (machine.gpus[0].index,)
                missing = [i for i in gpu_ids if i >= len(machine.gpus)]
                if missing:
                    why.append(f"cuda: GPU {missing[0]} does not exist ({len(machine.gpus)} visible)")
                    continue
                if len(gpu_ids) > 1 and not row.multi_gpu:
                    why.append("cuda: this engine runs on one GPU only")
                    continue
            if spec.gpu_layers not in (None, 0, -1) and not row.partial_offload:
                why.append(f"{kind}: this engine cannot offload part of the layers (gpu_layers)")
                continue
            if row.available is not None:
                ok, note = row.available()
                if not ok:
                    why.append(f"{kind}: {note}")
                    continue
            reason = "requested" if spec.kind != "auto" else (
                "auto: a CUDA GPU is visible" if kind == "cuda" else f"auto: {machine.gpu_note}; using the CPU")
            return Placement(kind=kind, dtype=dtype, gpu_ids=gpu_ids, blas=row.blas and spec.blas,
                             gpu_layers=spec.gpu_layers, threads=spec.threads, reason=reason)
    raise IncompatibleDeviceError(
        f"cannot run on {spec}{' ' + spec.dtype if spec.dtype else ''}: " + ("; ".join(why) or "no matching device"),
        where=f"format {fmt}",
        fix=_offer(rows, machine),
    )


def _offer(rows: Sequence[DeviceSupport], machine: Machine) -> str:
    """What to pass instead: only the devices this machine has and the engine can use here.

    ``file`` (a GGUF's own storage type) is not a choice a user makes, so it is not offered."""
    usable: list[str] = []
    for r in rows:
        if (r.kind == "cuda" and not machine.gpus) or (r.available is not None and not r.available()[0]):
            continue
        dev = "cuda" if r.kind == "cuda" else ("cpu:blas" if r.blas else "cpu")
        dtypes = [d for d in r.dtypes if d != "file"]
        text = f"--device {dev}" + (f" (dtype {'/'.join(dtypes)})" if dtypes else "")
        if text not in usable:
            usable.append(text)
    if not usable:
        return "no device of this machine can run this model with the installed engines (openllm-hub devices)"
    return "use " + " or ".join(usable)
