"""Building a GLM130BModel: ``load()`` (one rank in this process, or with ``nproc=N`` rank 0 here
and N-1 follower processes; see :func:`openllm_hub_glm130b.launch.open_model`), or on rank 0 of
a launched TP group."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from openllm_hub.plugin import IncompatibleDeviceError, LoadRequest, ModelInfo
from openllm_hub_glm130b.checkpoint import SatCheckpoint
from openllm_hub_glm130b.engine_tp import GLM130BModel
from openllm_hub_glm130b.network.parallel import TPGroup
from openllm_hub_glm130b.options import GLMOptions
from openllm_hub_glm130b.ranks import Backend, EngineOptions, RankEngine, preflight
from openllm_hub_glm130b.tokenizer import GLMTokenizer, SentencePieceGLMTokenizer, build_tokenizer

GIB = 1024**3


def make_tokenizer(ck: SatCheckpoint, override: str | Path | None = None) -> GLMTokenizer:
    """The config's tokenizer, or a sentencepiece model at ``override`` with the config's commands."""
    spec = ck.config.tokenizer
    if override is not None:
        return SentencePieceGLMTokenizer(override, spec.commands, spec.id_offset)
    return build_tokenizer(spec, ck.root)


def model_info(ck: SatCheckpoint, engine: RankEngine, device: str, dtype: str) -> ModelInfo:
    """``kv_bytes_per_token`` (what the server's default slot count divides free memory by) is
    rank 0's on a GPU (each rank has its own) and every rank's together in CPU memory."""
    cfg = engine.config
    kv_per_token = engine.kv_bytes_per_token() * (engine.tp.world if engine.device.type == "cpu" else 1)
    return ModelInfo(
        family="glm130b", format="sat", engine="torch-tp", path=str(ck.root), device=device,
        parameters=cfg.n_params(), quantization=None if cfg.quantization_bit_width is None
        else f"int{cfg.quantization_bit_width}", context_length=cfg.max_sequence_length,
        vocab_size=cfg.vocab_size, dtype=dtype,
        extra={"tensor_parallel": engine.tp.world, "checkpoint_tp": ck.tp,
               "offloaded_layers": sorted(engine.shard.offload_layers), "weight_bytes_rank0": engine.weight_bytes(),
               "kv_bytes_per_token": kv_per_token})


def build_model(ck: SatCheckpoint, engine: RankEngine, backend: Backend, device: str, dtype: str,
                tokenizer: str | Path | None = None) -> GLM130BModel:
    return GLM130BModel(model_info(ck, engine, device, dtype), backend, make_tokenizer(ck, tokenizer), engine.config)


def refuse_if_too_big(ck: SatCheckpoint, options: EngineOptions, device: torch.device, world: int = 1) -> None:
    """Ask the planner whether this rank's slice of a ``world``-rank run fits where it is going
    (with the load options: quantization, offloaded layers, dtype); refuse early with numbers.
    On a GPU each rank has its own device; in CPU memory all the ranks of this machine share it."""
    from openllm_hub.plugin import estimate
    from openllm_hub_glm130b.memory import spec_from_config

    offloaded = options.offload_layers
    n_off = ck.config.num_layers if offloaded == "all" else len(offloaded)
    bits = ck.bits or options.quantize
    dtype_bytes = 4 if options.dtype == "fp32" else 2
    est = estimate(spec_from_config(ck.config), tp=world, bits=bits, offload_layers=n_off, dtype_bytes=dtype_bytes)
    if device.type != "cuda":
        est = replace(est, reserve_bytes=0)  # the runtime reserve is a GPU's (CUDA context, workspaces)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        capacity, what = int(free), f"GPU {device.index} has {free / GIB:.1f} GiB free"
        need, ranks = est.total_bytes, f" per rank of {world}" if world > 1 else ""
    else:
        ram = _available_ram()
        if ram is None:
            return
        capacity, what = ram, f"this machine has {ram / GIB:.1f} GiB of memory available"
        need, ranks = est.total_bytes * world, f" for its {world} ranks" if world > 1 else ""
    if need > capacity:
        raise IncompatibleDeviceError(
            f"the model needs about {need / GIB:.1f} GiB here{ranks} ({est.describe()}) but {what}",
            where=ck.root,
            fix=f"run `openllm-hub plan {ck.root} --gpus NxMEM` for a layout that fits (tensor parallelism with "
                "nproc=N on as many GPUs, quantize='int8'/'int4', offload_layers)")


def _available_ram() -> int | None:
    from openllm_hub.plugin import available_ram

    return available_ram()


def load_sat(req: LoadRequest[GLMOptions]) -> GLM130BModel:
    """The family's ``load``: one in-process rank (TP=1) on the planned device, or with
    ``nproc=N`` rank 0 in this process and N-1 follower processes (one GPU each on CUDA)."""
    from openllm_hub_glm130b.network.quant import parse_bits

    opts = req.options
    pl = req.placement
    nproc = opts.nproc
    gpus = rank_gpus(pl.gpu_ids, nproc) if pl.kind == "cuda" else ()
    device = torch.device(f"cuda:{gpus[0]}" if pl.kind == "cuda" else "cpu")
    offload: Any = opts.offload_layers if opts.offload_layers is not None else ()
    options = EngineOptions(dtype=pl.dtype, quantize=parse_bits(opts.quantize),
                            offload_layers=offload if offload == "all" else tuple(offload))
    ck = preflight(req.path, nproc, options)
    if opts.check_memory:
        refuse_if_too_big(ck, options, device, nproc)
    if nproc > 1:
        from openllm_hub_glm130b.launch import RunSpec, open_model

        threads = pl.threads or max(1, (os.cpu_count() or 1) // nproc)
        if pl.threads or pl.kind == "cpu":  # rank 0 is this process: on CPU the ranks share the cores
            torch.set_num_threads(threads)
        model = open_model(RunSpec(str(req.path), options, opts.tokenizer), nproc, pl.kind, gpus=gpus,
                           threads=threads)
        assert isinstance(model, GLM130BModel)
        return model
    if pl.threads:
        torch.set_num_threads(pl.threads)
    engine = RankEngine(ck, TPGroup(), device, options)
    return build_model(ck, engine, Backend(engine), str(device), pl.dtype, opts.tokenizer)


def rank_gpus(named: tuple[int, ...], nproc: int) -> tuple[int, ...]:
    """Each rank's GPU: the first ``nproc`` of the GPUs the device names (``cuda:0,1,2,3``), or
    with one GPU named (``cuda``, ``cuda:N``) that one and the next ones."""
    if len(named) >= nproc:
        return named[:nproc]
    if len(named) > 1:
        raise IncompatibleDeviceError(f"the device names {len(named)} GPUs for {nproc} tensor-parallel ranks",
                                      where="device", fix=f"name {nproc} GPUs (one per rank), or one to start from")
    first = named[0] if named else 0
    visible = torch.cuda.device_count()
    if first + nproc > visible:
        raise IncompatibleDeviceError(f"{nproc} tensor-parallel ranks from cuda:{first} need GPUs up to "
                                      f"cuda:{first + nproc - 1}; {visible} visible", where="nproc",
                                      fix="lower nproc, start from a lower GPU, or use device='cpu'")
    return tuple(range(first, first + nproc))
