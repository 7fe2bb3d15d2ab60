"""CLI subcommands of the plugin (added through the ``register_commands`` hook).

* ``glm130b-run MODEL [--nproc N] [-p PROMPT ...]`` (prompts from stdin when none is given), with
  ``openllm-hub run``'s sampling and device flags (``-n``, ``--temp``, ``-t``, ``--device``, ...)
* ``glm130b-repartition SRC DST --tp N [--quantize int8|int4]``
* ``glm130b-init-config CKPT`` (writes the published GLM-130B config next to ``latest``)

They import the engine when they run. (``plan MODEL --gpus 8x40G`` is the core's command, fed by
:mod:`openllm_hub_glm130b.memory`.)
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from openllm_hub.plugin import (
    InvalidParameterError,
    add_device_arguments,
    add_generation_arguments,
    add_hidden_alias,
    generation_params,
)

# ---- run -------------------------------------------------------------------------------------
#: Names ``glm130b-run`` used before it took ``openllm-hub run``'s flags: still accepted, not listed.
OLD_FLAG_NAMES = {"--max-new-tokens": ("max_new_tokens", int), "--temperature": ("temperature", float)}


def add_run_arguments(p: argparse.ArgumentParser, *, launcher: bool = False) -> None:
    """Arguments shared by ``glm130b-run`` (``launcher``: also ``--device`` and ``-t/--threads``)
    and ``python -m openllm_hub_glm130b`` (under torchrun, which chooses device and threads).

    Sampling and device flags are ``openllm-hub run``'s (:mod:`openllm_hub.cli_args`: ``-n``,
    ``--temp``, ``--top-k``, ``--top-p``, ``--seed``, ...); the old ``--max-new-tokens`` and
    ``--temperature`` still work. Beam search and blank filling have GLM's own flags.
    """
    p.add_argument("model", help="SAT checkpoint folder (latest + mp_rank_NN_model_states.pt + glm130b_config.json)")
    p.add_argument("-p", "--prompt", action="append", default=None,
                   help="a prompt (repeatable); may contain [MASK], [sMASK] or [gMASK]. Default: one per stdin line")
    add_generation_arguments(p, n_default=64, color=False)
    for flag, (dest, kind) in OLD_FLAG_NAMES.items():
        add_hidden_alias(p, flag, dest, type=kind)
    add_device_arguments(p, devices="auto, cpu or cuda (default auto: CUDA when every rank gets a GPU)",
                         dtypes=("fp16", "bf16", "fp32"), threads_help="torch threads per rank (default: CPUs / ranks)",
                         dtype_only=not launcher)
    g = p.add_argument_group("GLM-130B")
    g.add_argument("--strategy", choices=("greedy", "sample", "beam"), default="sample",
                   help="greedy (ignores --temp), sample (default) or beam search")
    g.add_argument("--num-beams", type=int, default=4, help="beams of --strategy beam (default 4)")
    g.add_argument("--length-penalty", type=float, default=1.0, help="beam score / length**penalty (default 1)")
    g.add_argument("--no-repeat-ngram", type=int, default=0, help="beam search: forbid repeated n-grams of this size")
    g.add_argument("--min-new-tokens", type=int, default=0, help="beam search: tokens before an end may be chosen")
    g.add_argument("--parallel", type=int, default=None, metavar="N",
                   help="prompts decoded together in one batch when there are several (default: all; beam search "
                        "runs them one after the other)")
    g.add_argument("--quantize", choices=("int8", "int4"), default=None, help="quantize the linears on load")
    g.add_argument("--offload-layers", default=None, help="'all' or comma-separated layer numbers kept in CPU memory")
    g.add_argument("--tokenizer", default=None, help="a sentencepiece .model to use instead of the config's")


def job_from_args(args: argparse.Namespace) -> Any:
    from openllm_hub_glm130b.jobs import GenerateJob

    prompts = args.prompt
    if not prompts:
        prompts = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not prompts:
        raise InvalidParameterError("no prompt given", where="glm130b-run", fix="pass -p TEXT or lines on stdin")
    if args.parallel is not None and args.parallel < 1:
        raise InvalidParameterError(f"--parallel must be at least 1, got {args.parallel}", where="--parallel")
    params = generation_params(args)
    if args.strategy == "greedy":
        params["temperature"] = 0.0
    return GenerateJob(tuple(prompts), num_beams=args.num_beams if args.strategy == "beam" else None,
                       params=tuple(params.items()), length_penalty=args.length_penalty,
                       no_repeat_ngram_size=args.no_repeat_ngram, min_new_tokens=args.min_new_tokens,
                       parallel=args.parallel)


def spec_from_args(args: argparse.Namespace, device_kind: str) -> Any:
    from openllm_hub_glm130b.launch import RunSpec
    from openllm_hub_glm130b.network.quant import parse_bits
    from openllm_hub_glm130b.ranks import EngineOptions

    dtype = args.dtype or ("fp16" if device_kind == "cuda" else "fp32")
    off: tuple[int, ...] | str = ()
    if args.offload_layers:
        if args.offload_layers == "all":
            off = "all"
        else:
            try:
                off = tuple(int(x) for x in args.offload_layers.split(","))
            except ValueError:
                raise InvalidParameterError(f"cannot parse --offload-layers {args.offload_layers!r}",
                                            where="--offload-layers", fix="use 'all' or e.g. 0,1,2") from None
    return RunSpec(str(args.model), EngineOptions(dtype=dtype, quantize=parse_bits(args.quantize),
                                                  offload_layers=off), args.tokenizer)


def add_run(cli: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = cli.add_parser("glm130b-run", help="run a GLM-130B checkpoint with tensor parallelism over N ranks",
                       description="Spawns --nproc ranks (NCCL on GPUs, gloo on CPU); rank 0 streams the output. "
                                   "For several machines use torchrun ... -m openllm_hub_glm130b MODEL.")
    add_run_arguments(p, launcher=True)
    p.add_argument("--nproc", type=int, default=1, help="tensor-parallel ranks to start on this machine")
    p.set_defaults(handler=run_run)


def run_run(args: argparse.Namespace) -> int:
    from openllm_hub_glm130b.launch import pick_device, rank_main, spawn

    kind = pick_device(args.device, args.nproc)
    spec = spec_from_args(args, kind)
    job = job_from_args(args)
    if args.nproc == 1:
        import torch

        from openllm_hub_glm130b.ranks import preflight

        preflight(spec.path, 1, spec.options)
        if args.threads:
            torch.set_num_threads(args.threads)
        rank_main(spec, 0, 1, kind, 0, job)
    else:
        spawn(spec, args.nproc, job, device=kind, threads=args.threads)
    return 0


# ---- repartition / init-config ----------------------------------------------------------------
def add_repartition(cli: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = cli.add_parser("glm130b-repartition", help="re-split a GLM-130B SAT checkpoint for another TP degree",
                       description="Writes SRC's shards for --tp ranks to DST (optionally INT8/INT4-quantized per "
                                   "shard). Quantized checkpoints are refused: repartition the fp16 one.")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--tp", type=int, required=True)
    p.add_argument("--quantize", choices=("int8", "int4"), default=None)
    p.add_argument("--force", action="store_true")
    p.set_defaults(handler=run_repartition)


def run_repartition(args: argparse.Namespace) -> int:
    from openllm_hub.plugin import progress_enabled
    from openllm_hub_glm130b.checkpoint import repartition
    from openllm_hub_glm130b.network.quant import parse_bits

    out = repartition(args.src, args.dst, args.tp, bits=parse_bits(args.quantize), force=args.force,
                      progress=progress_enabled())
    print(f"wrote a TP={args.tp} checkpoint to {out}")
    return 0


def add_init_config(cli: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = cli.add_parser("glm130b-init-config", help="write the published GLM-130B config into a SAT checkpoint")
    p.add_argument("ckpt")
    p.add_argument("--force", action="store_true")
    p.set_defaults(handler=run_init_config)


def run_init_config(args: argparse.Namespace) -> int:
    from pathlib import Path

    from openllm_hub.plugin import atomic_output, write_json
    from openllm_hub_glm130b.checkpoint import find_iteration, list_shards
    from openllm_hub_glm130b.spec import CONFIG_NAME, GLM_130B

    root = Path(args.ckpt)
    shards = list_shards(find_iteration(root))
    if not shards:
        raise InvalidParameterError("no mp_rank_NN_model_states.pt in the iteration folder", where=root)
    cfg = GLM_130B.with_(model_parallel_size=max(shards) + 1)
    with atomic_output(root / CONFIG_NAME, force=args.force) as tmp:
        write_json(tmp, cfg.to_json())
    print(f"wrote {root / CONFIG_NAME} (TP={cfg.model_parallel_size}, icetk tokenizer)")
    return 0


def register(cli: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    add_run(cli)
    add_repartition(cli)
    add_init_config(cli)
