"""Running a GLM-130B checkpoint on several tensor-parallel ranks.

Three launchers share the rank code (:func:`open_rank`, :func:`control_group`, :func:`join_group`):

* :func:`spawn` starts ``nproc`` ranks on this machine with ``torch.multiprocessing``
  (``openllm-hub glm130b-run MODEL --nproc N``): NCCL over the GPUs when there are enough,
  gloo on CPU, rendezvous on a free port of 127.0.0.1; rank 0 runs a *job* and returns;
* :func:`torchrun_main` runs inside a process started by ``torchrun`` (several machines:
  ``torchrun --nnodes ... --nproc-per-node ... -m openllm_hub_glm130b MODEL ...``), reading
  RANK/WORLD_SIZE/LOCAL_RANK and the rendezvous from the environment;
* :func:`open_model` (``load(MODEL, nproc=N)``, ``serve MODEL --nproc N``) keeps rank 0 in the
  calling process and returns its model, which lives until ``Model.close()``; ranks 1..N-1 are
  :class:`Followers` in processes of their own.

Every rank checks the checkpoint before the process group forms (:func:`preflight`), and
the launchers check it once more before starting anything, so bad input fails before any
rank computes. Rank 0 runs the user API; the others follow its engine calls. Control
messages go over a gloo group, tensors over NCCL or gloo.
"""

from __future__ import annotations

import os
import pickle
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from openllm_hub.plugin import IncompatibleDeviceError, InvalidParameterError, OpenLLMHubError
from openllm_hub_glm130b.checkpoint import SatCheckpoint
from openllm_hub_glm130b.ranks import EngineOptions, RankEngine, preflight

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


def open_rank(spec: RunSpec, rank: int, world: int, device_kind: str,
              local_rank: int) -> tuple[SatCheckpoint, RankEngine]:
    """This rank's checkpoint (checked by :func:`preflight`) and engine, on ``cuda:local_rank``
    (made the current device) or the CPU. Needs no process group yet: the engine's
    collectives use the default group once it exists."""
    import torch

    from openllm_hub_glm130b.network.parallel import TPGroup

    ck = preflight(spec.path, world, spec.options)
    device = torch.device(f"cuda:{local_rank}" if device_kind == "cuda" else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return ck, RankEngine(ck, TPGroup(rank, world, None), device, spec.options)


def control_group(world: int) -> Any:
    """The gloo group rank 0's engine calls are broadcast on (the default group when that is
    gloo); None with one rank. Every rank calls it, after :func:`join_group`."""
    if world == 1:
        return None
    import torch.distributed as dist

    return dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD


def join_group(rank: int, world: int, port: int, device_kind: str) -> None:
    """Join the default process group of ``world`` local ranks meeting on 127.0.0.1:``port``
    (rank 0 hosts the rendezvous): NCCL on CUDA, gloo on CPU."""
    import torch.distributed as dist

    dist.init_process_group("nccl" if device_kind == "cuda" else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=rank, world_size=world, timeout=timedelta(minutes=30))


def rank_main(spec: RunSpec, rank: int, world: int, device_kind: str, local_rank: int, job: Job) -> Any:
    """Build this rank's engine; rank 0 runs ``job(model)``, the others follow. Needs an
    initialised default process group when ``world > 1``."""
    from openllm_hub_glm130b.loader import build_model
    from openllm_hub_glm130b.ranks import Backend, follow

    ck, engine = open_rank(spec, rank, world, device_kind, local_rank)
    control = control_group(world)
    if rank != 0:
        follow(engine, control)
        return None
    model = build_model(ck, engine, Backend(engine, control, broadcast=world > 1), str(engine.device),
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
    result_file = Path(out_dir) / f"rank{rank}.pkl"
    try:
        join_group(rank, world, port, device_kind)
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
    _quit(0)


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
    _gloo_on_loopback()
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


def _gloo_on_loopback() -> None:
    if os.path.exists("/sys/class/net/lo"):  # ranks meet on 127.0.0.1: keep gloo on the loopback device
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")


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


# ---- rank 0 in this process: load(MODEL, nproc=N), serve MODEL --nproc N ---------------------
#
# Rank 0 lives in the caller's process, so ``load()`` returns an ordinary model (no proxy, no
# copy of each request and token between processes). That is possible because a rank needs
# nothing of its process but torch.distributed's *default* process group, which the engine's
# collectives use; the price is that a process holds one such group: a process that already
# has one (another tensor-parallel model still open, or a torchrun rank) is refused with the
# way out, and ``Model.close()`` destroys it, so a later load may make it again.
#
# The other ranks are multiprocessing "spawn" children (fresh interpreters: torch and CUDA state
# are not fork-safe), daemonic so that an interpreter exiting without closing the model
# terminates them. Each builds its engine and reports ready (or its error) on a pipe *before*
# the group forms, so a rank that cannot start fails the load at once with its own error
# instead of leaving rank 0 waiting for a rendezvous. A follower ignores SIGINT (Ctrl-C in a
# terminal reaches every process of the foreground group; rank 0 decides when the ranks stop)
# and exits on its own when its parent process is gone (a thread watches ``os.getppid()``:
# PR_SET_PDEATHSIG, which torch's own spawn uses, fires when the *thread* that started the
# child ends, which a load from a worker thread would hit).

READY = "ready"
#: seconds a follower has to exit after the ``close`` broadcast before it is killed
CLOSE_GRACE_S = 30.0


class Followers:
    """Ranks 1..N-1 of a model whose rank 0 is this process: their processes, and their end."""

    def __init__(self, path: str, processes: list[Any]) -> None:
        self.path, self.processes = path, processes

    def wait_ready(self, pipes: list[Any]) -> None:
        """Block until every follower has built its engine; raise the error of one that could not."""
        from multiprocessing.connection import wait

        pending = dict(zip(pipes, self.processes, strict=True))
        while pending:
            wait([*pending, *(p.sentinel for p in pending.values())])
            for pipe, proc in list(pending.items()):
                if pipe.poll():
                    try:
                        status, value = pipe.recv()
                    except EOFError:
                        status, value = "exit", None
                elif proc.exitcode is not None:
                    status, value = "exit", None
                else:
                    continue
                if status != READY:
                    raise self._start_error(proc, value)
                del pending[pipe]
                pipe.close()

    def _start_error(self, proc: Any, value: Any) -> BaseException:
        rank = self.processes.index(proc) + 1
        if isinstance(value, OpenLLMHubError):
            return value  # the rank's own account (what, where, fix), e.g. NaN weights in its shard
        proc.join(5)
        what = (f"tensor-parallel rank {rank} could not start: {value!r}" if value is not None else
                f"tensor-parallel rank {rank} exited (code {proc.exitcode}) before it was ready")
        return OpenLLMHubError(what, where=self.path,
                               fix="see the rank's error above on stderr; a script calling load(..., nproc=N) at "
                                   "its top level must do so under `if __name__ == '__main__':` (ranks start as "
                                   "fresh Python processes that import the main module)")

    def lost(self) -> OpenLLMHubError | None:
        """An error naming a follower that has stopped, or None while all run. A collective that
        failed because a peer went away may notice before that process is reaped: wait up to 1 s."""
        deadline = time.monotonic() + 1.0
        while True:
            for rank, proc in enumerate(self.processes, 1):
                if proc.exitcode is not None:
                    return OpenLLMHubError(f"tensor-parallel rank {rank} stopped (exit code {proc.exitcode}); the "
                                           "model cannot run without it", where=self.path,
                                           fix="close the model and load it again (the rank's error is on stderr)")
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)

    def close(self, grace: float = CLOSE_GRACE_S) -> None:
        """After rank 0 broadcast ``close``: leave the process group, let the followers exit,
        kill any that has not after ``grace`` seconds; none is left running."""
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
        deadline = time.monotonic() + grace
        for proc in self.processes:
            proc.join(max(0.0, deadline - time.monotonic()))
        self.kill()

    def kill(self) -> None:
        for proc in self.processes:
            if proc.is_alive():
                proc.kill()
            proc.join(5)


def open_model(spec: RunSpec, nproc: int, device_kind: str, *, gpus: Sequence[int] = (),
               threads: int | None = None) -> Any:
    """Rank 0 of ``nproc`` ranks on this machine, in this process: its ``GLM130BModel``, whose
    engine calls ranks 1..N-1 (started here as :class:`Followers`) repeat. ``gpus``: each rank's
    CUDA device index (``device_kind == "cuda"``); ``threads``: torch threads of each follower
    (default: this machine's CPUs divided among the ranks). ``Model.close()`` stops them."""
    import multiprocessing

    import torch.distributed as dist

    from openllm_hub_glm130b.loader import build_model
    from openllm_hub_glm130b.ranks import Backend

    if nproc < 2:
        raise InvalidParameterError(f"open_model needs at least 2 ranks, got {nproc}", where="nproc")
    preflight(spec.path, nproc, spec.options)  # fail here, before any rank starts
    if dist.is_initialized():
        raise InvalidParameterError(
            "this process already has a torch.distributed process group (another model loaded with nproc is "
            "open, or this is a torchrun rank); rank 0 of a tensor-parallel model needs it",
            where="nproc", fix="close the other model first; under torchrun use `-m openllm_hub_glm130b` or jobs")
    local = list(gpus) if device_kind == "cuda" else [0] * nproc
    if len(local) != nproc:
        raise InvalidParameterError(f"{nproc} ranks need {nproc} GPUs, {len(local)} given", where="nproc")
    _gloo_on_loopback()
    port = free_port()
    ctx = multiprocessing.get_context("spawn")
    followers = Followers(spec.path, [])
    pipes = []
    try:
        for rank in range(1, nproc):
            recv, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_follower_main, name=f"glm130b-rank{rank}", daemon=True,
                               args=(spec, rank, nproc, port, device_kind, local[rank],
                                     threads or _threads_per_rank(nproc), os.getpid(), send))
            proc.start()
            send.close()
            followers.processes.append(proc)
            pipes.append(recv)
        ck, engine = open_rank(spec, 0, nproc, device_kind, local[0])  # while the followers build theirs
        followers.wait_ready(pipes)
        join_group(0, nproc, port, device_kind)
        control = control_group(nproc)
    except BaseException:
        followers.kill()
        if dist.is_initialized():
            dist.destroy_process_group()
        raise
    backend = Backend(engine, control, broadcast=True, followers=followers)
    try:
        return build_model(ck, engine, backend, str(engine.device), spec.options.dtype, spec.tokenizer)
    except BaseException:
        backend.close()
        raise


def _follower_main(spec: RunSpec, rank: int, world: int, port: int, device_kind: str, local_rank: int,
                   threads: int, parent: int, pipe: Any) -> None:
    """A follower process of :func:`open_model`: build the engine, report, follow rank 0 until
    it broadcasts ``close`` (or its process is gone), exit."""
    import signal
    import threading

    import torch
    import torch.distributed as dist

    from openllm_hub_glm130b.ranks import follow

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(parent, rank), daemon=True).start()
    torch.set_num_threads(threads)
    try:
        _, engine = open_rank(spec, rank, world, device_kind, local_rank)
    except BaseException as exc:  # noqa: BLE001 - reported to rank 0, which raises it
        _report(pipe, ("error", exc))
        _quit(1)
    _report(pipe, (READY, None))
    try:
        join_group(rank, world, port, device_kind)
        follow(engine, control_group(world))
        dist.destroy_process_group()
    except BaseException as exc:  # noqa: BLE001 - rank 0 went away mid-call: nothing left to serve
        print(f"glm130b rank {rank}: stopped: {exc}", file=sys.stderr)
        _quit(1)
    _quit(0)


def _report(pipe: Any, message: tuple[str, Any]) -> None:
    try:
        pipe.send(message)
    except Exception:  # noqa: BLE001 - an error that cannot be pickled goes as text
        pipe.send((message[0], RuntimeError(repr(message[1]))))
    pipe.close()


def _exit_with_parent(parent: int, rank: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    print(f"glm130b rank {rank}: rank 0's process is gone; exiting", file=sys.stderr)
    _quit(1)


def _quit(code: int) -> NoReturn:
    """Exit now, skipping the interpreter's teardown (seconds of torch's on a busy machine)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


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
