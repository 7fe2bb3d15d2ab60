"""Running a GLM-130B checkpoint on several tensor-parallel ranks.

Two launchers share :func:`rank_main`:

* :func:`spawn` starts ``nproc`` ranks on this machine with ``torch.multiprocessing``
  (``openllm-hub glm130b-run MODEL --nproc N``): NCCL over the GPUs when there are enough,
  gloo on CPU, rendezvous on a free port of 127.0.0.1;
* :func:`torchrun_main` runs inside a process started by ``torchrun`` (several machines:
  ``torchrun --nnodes ... --nproc-per-node ... -m openllm_hub_glm130b MODEL ...``), reading
  RANK/WORLD_SIZE/LOCAL_RANK and the rendezvous from the environment.

Every rank checks the checkpoint before the process group forms (:func:`preflight`), and
:func:`spawn` checks it once more before starting anything, so bad input fails before any
rank computes. Rank 0 runs a *job* (a picklable callable taking the model); the others
follow its engine calls. Control messages go over a gloo group, tensors over NCCL or gloo.
"""

from __future__ import annotations

import os
import pickle
import socket
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from openllm_hub.plugin import IncompatibleDeviceError, InvalidParameterError, OpenLLMHubError
from openllm_hub_glm130b.ranks import EngineOptions, preflight

T = TypeVar("T")
Job = Callable[[Any], Any]


@dataclass(frozen=True)
class RunSpec:
    """What every rank loads: the checkpoint, engine options, an optional tokenizer override."""

    path: str
    options: EngineOptions = field(default_factory=EngineOptions)
    tokenizer: str | None = None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pick_device(device: str, nproc: int) -> str:
    """``cpu`` or ``cuda`` for ``nproc`` local ranks (``auto``: CUDA when every rank gets a GPU)."""
    import torch

    if device not in ("auto", "cpu", "cuda"):
        raise InvalidParameterError(f"unknown device {device!r}", where="--device", fix="use auto, cpu or cuda")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device == "cuda" and gpus < nproc:
        raise IncompatibleDeviceError(f"{nproc} ranks need {nproc} GPUs; {gpus} visible", where="--device",
                                      fix="lower --nproc or use --device cpu")
    if device == "auto":
        return "cuda" if gpus >= nproc else "cpu"
    return device


def rank_main(spec: RunSpec, rank: int, world: int, device_kind: str, local_rank: int, job: Job) -> Any:
    """Build this rank's engine; rank 0 runs ``job(model)``, the others follow. Needs an
    initialised default process group when ``world > 1``."""
    import torch

    from openllm_hub_glm130b.loader import build_model
    from openllm_hub_glm130b.network.parallel import TPGroup
    from openllm_hub_glm130b.ranks import Backend, RankEngine, follow

    ck = preflight(spec.path, world, spec.options)
    device = torch.device(f"cuda:{local_rank}" if device_kind == "cuda" else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    control = None
    if world > 1:
        import torch.distributed as dist

        control = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD
    engine = RankEngine(ck, TPGroup(rank, world, None), device, spec.options)
    if rank != 0:
        follow(engine, control)
        return None
    model = build_model(ck, engine, Backend(engine, control, broadcast=world > 1), str(device),
                        spec.options.dtype, spec.tokenizer)
    try:
        return job(model)
    finally:
        model.close()


def _threads_per_rank(world: int) -> int:
    return max(1, (os.cpu_count() or 1) // world)


def _spawned(rank: int, world: int, port: int, work: list[tuple[RunSpec, Job]], out_dir: str,
             device_kind: str, threads: int | None) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(threads or _threads_per_rank(world))
    backend = "nccl" if device_kind == "cuda" else "gloo"
    result_file = Path(out_dir) / f"rank{rank}.pkl"
    try:
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=timedelta(minutes=30))
        try:
            results = [rank_main(spec, rank, world, device_kind, rank, job) for spec, job in work]
        finally:
            dist.destroy_process_group()
        if rank == 0:
            result_file.write_bytes(pickle.dumps(("ok", results)))
    except BaseException as exc:
        result_file.write_bytes(pickle.dumps(("error", exc)))
        raise
    # Success: the group is gone and the result written. A normal interpreter exit would now
    # spend seconds tearing torch down (8 s on a busy 2-core machine); nothing is left to clean.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def spawn(spec: RunSpec, nproc: int, job: Job, *, device: str = "auto", threads: int | None = None) -> Any:
    """Run ``job`` on rank 0 of ``nproc`` local ranks; return its result."""
    return spawn_many([(spec, job)], nproc, device=device, threads=threads)[0]


def spawn_many(work: list[tuple[RunSpec, Job]], nproc: int, *, device: str = "auto",
               threads: int | None = None) -> list[Any]:
    """Run several (checkpoint, job) pairs one after the other on the same ``nproc`` ranks
    (processes and the process group are set up once); return rank 0's results. ``threads``:
    torch threads per rank (default: this machine's CPUs divided among the ranks)."""
    from torch.multiprocessing.spawn import ProcessExitedException, ProcessRaisedException, start_processes

    if nproc < 1:
        raise InvalidParameterError("--nproc must be at least 1", where="--nproc")
    for spec, _ in work:
        preflight(spec.path, nproc, spec.options)  # fail here, before any rank starts
    kind = pick_device(device, nproc)
    if os.path.exists("/sys/class/net/lo"):  # ranks meet on 127.0.0.1: keep gloo on the loopback device
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    with tempfile.TemporaryDirectory(prefix="glm130b-ranks-") as out_dir:
        port = free_port()
        try:
            start_processes(_spawned, args=(nproc, port, list(work), out_dir, kind, threads),  # type: ignore[no-untyped-call]
                            nprocs=nproc, join=True, start_method="spawn")
        except ProcessRaisedException as exc:
            raise _rank_error(Path(out_dir), nproc) or exc from None
        except ProcessExitedException as exc:
            raise _rank_error(Path(out_dir), nproc) or exc from None
        status, value = pickle.loads((Path(out_dir) / "rank0.pkl").read_bytes())
        if status != "ok":
            raise value
        return list(value)


def _rank_error(out_dir: Path, nproc: int) -> BaseException | None:
    """The first error a rank recorded (rank 0 first), preferring our own error types."""
    found: list[BaseException] = []
    for rank in range(nproc):
        f = out_dir / f"rank{rank}.pkl"
        if f.is_file():
            status, value = pickle.loads(f.read_bytes())
            if status == "error":
                found.append(value)
    ours = [e for e in found if isinstance(e, OpenLLMHubError)]
    return (ours or found or [None])[0]


def torchrun_main(spec: RunSpec, job: Job) -> Any:
    """Inside a torchrun-launched process: join the group from the environment and run."""
    import torch
    import torch.distributed as dist

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    preflight(spec.path, world, spec.options)
    kind = "cuda" if torch.cuda.is_available() and torch.cuda.device_count() > local_rank else "cpu"
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    if world == 1:
        return rank_main(spec, 0, 1, kind, local_rank, job)
    dist.init_process_group("nccl" if kind == "cuda" else "gloo", timeout=timedelta(minutes=30))
    try:
        return rank_main(spec, rank, world, kind, local_rank, job)
    finally:
        dist.destroy_process_group()
