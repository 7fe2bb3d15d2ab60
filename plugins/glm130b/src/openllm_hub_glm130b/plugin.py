"""Hook implementations of the GLM-130B plugin: the ``glm130b`` family and its CLI commands.

Nothing heavy is imported here; torch and the engine load inside the functions that run them.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from pydantic import Field

from openllm_hub.plugin import (
    Converter,
    ConverterOptions,
    ConvertRequest,
    Detection,
    DeviceSupport,
    Family,
    LaunchRequest,
    LoadRequest,
    Model,
    Probe,
    Quantizer,
    QuantizeRequest,
    TinyBuilder,
    hookimpl,
)
from openllm_hub_glm130b import memory
from openllm_hub_glm130b.options import GLMOptions
from openllm_hub_glm130b.spec import CONFIG_NAME, MODEL_TYPE
from openllm_hub_glm130b.tiny import TINY_FORMATS, TINY_OPTIONS, write_tiny

OPENLLM_HUB_API_VERSION = 1


def _detect(probe: Probe) -> Detection | None:
    if not probe.has("latest"):
        return None
    cfg = probe.json(CONFIG_NAME)
    if cfg is not None and cfg.get("model_type") == MODEL_TYPE:
        return Detection("sat", 0.95, f"SwissArmyTransformer checkpoint with {CONFIG_NAME} (model_type={MODEL_TYPE})")
    try:
        with (probe.path / "latest").open("rb") as fh:
            name = fh.read(256).decode("utf-8", errors="replace").strip()
        folder = probe.path / name
        if name and folder.is_dir() and any(p.name.startswith("mp_rank_") for p in folder.iterdir()):
            return Detection("sat", 0.4, f"SwissArmyTransformer checkpoint without {CONFIG_NAME}")
    except (OSError, ValueError):  # an unreadable or absurd 'latest' is not ours to judge here
        pass
    return None


def _load(req: LoadRequest[GLMOptions]) -> Model:
    from openllm_hub_glm130b.loader import load_sat

    return load_sat(req)


def _launch(req: LaunchRequest) -> int:
    """``openllm-hub run MODEL --nproc N``: spawn N tensor-parallel ranks; rank 0 streams."""
    from openllm_hub_glm130b.jobs import GenerateJob
    from openllm_hub_glm130b.launch import RunSpec, pick_device, spawn
    from openllm_hub_glm130b.network.quant import parse_bits
    from openllm_hub_glm130b.ranks import EngineOptions

    opts = req.options
    assert isinstance(opts, GLMOptions)
    if opts.nproc not in (1, req.nproc):
        from openllm_hub.plugin import InvalidParameterError

        raise InvalidParameterError(f"-o nproc={opts.nproc} and --nproc {req.nproc} disagree", where="nproc",
                                    fix="give the number of ranks once")
    kind = pick_device(req.device if req.device in ("auto", "cpu", "cuda") else "cuda", req.nproc)
    dtype = req.dtype or ("fp16" if kind == "cuda" else "fp32")
    offload = tuple(opts.offload_layers) if isinstance(opts.offload_layers, list) else (opts.offload_layers or ())
    spec = RunSpec(str(req.path), EngineOptions(dtype=dtype, quantize=parse_bits(opts.quantize),
                                                offload_layers=offload), opts.tokenizer)
    spawn(spec, req.nproc, GenerateJob((req.prompt,), params=tuple(req.params.items())), device=kind,
          threads=req.threads)
    return 0


def _repartition(req: ConvertRequest) -> None:
    from openllm_hub_glm130b.checkpoint import SatCheckpoint, write_into
    from openllm_hub_glm130b.network.quant import parse_bits

    ck = SatCheckpoint.open(req.src)
    tp = int(req.options.get("tp", ck.tp))  # validated by RepartitionOptions
    ck.check_world(tp)
    bits = None if req.outtype in (None, "auto") else parse_bits(req.outtype)
    if ck.bits is not None:
        from openllm_hub.plugin import InvalidParameterError

        raise InvalidParameterError("this checkpoint is already quantized", where=ck.root,
                                    fix="repartition the floating-point checkpoint")
    write_into(ck, req.dst, tp, bits=bits, progress=req.progress)


def _quantize(req: QuantizeRequest) -> None:
    from openllm_hub_glm130b.checkpoint import SatCheckpoint, write_into
    from openllm_hub_glm130b.network.quant import parse_bits

    ck = SatCheckpoint.open(req.src)
    write_into(ck, req.dst, ck.tp, bits=parse_bits(req.scheme), progress=req.progress)


class RepartitionOptions(ConverterOptions):
    tp: int | None = Field(None, ge=1, le=4096, description="tensor-parallel degree of the output (default: "
                           "the source's)")


FAMILY = Family(
    name="glm130b",
    aliases=("glm-130b",),
    description="GLM-130B-shaped models from SwissArmyTransformer checkpoints, tensor-parallel on torch.distributed",
    formats=("sat",),
    detect=_detect,
    load=_load,
    options=GLMOptions,
    launch=_launch,
    memory=memory.read, published_shapes=memory.PUBLISHED,
    devices=(
        DeviceSupport("cuda", ("fp16", "bf16", "fp32")),
        DeviceSupport("cpu", ("fp32", "bf16")),
    ),
    converters=(
        Converter("sat", "sat", _repartition, outtypes=("auto", "int8", "int4"), default_outtype="auto",
                  output_is_dir=True,
                  # re-splitting moves values without changing them; only the all-reduce order differs.
                  # int8/int4: measured 2.3e-3 / 4.1e-2 of the logit range on the gain-1 tiny model
                  # (tests' `smooth`, as trained networks are); the bounds are test_model.py's
                  # quantization bounds (~4x / ~3.5x headroom). A chaotic random-init network amplifies
                  # rounding far beyond them, and --verify then refuses, as it should.
                  verify_bounds={"auto": 1e-5, "int8": 1e-2, "int4": 0.15}, exact_outtypes=("auto",),
                  options=RepartitionOptions,
                  description="re-split for another TP degree (options: tp=N); int8/int4 quantize per shard"),
    ),
    quantizers=(
        Quantizer("sat", ("int8", "int4"), _quantize, output_is_dir=True,
                  description="INT8/INT4 weight-only quantization of the linear layers, per shard (per-row scales)"),
    ),
    tiny=TinyBuilder(TINY_FORMATS, write_tiny, TINY_OPTIONS),
)


@hookimpl
def register_families(register: Callable[[Family], None]) -> None:
    register(FAMILY)


@hookimpl
def register_commands(cli: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from openllm_hub_glm130b.commands import register

    register(cli)
