"""Hook implementations of the RWKV plugin: the ``rwkv`` family and ChatRWKV's chat templates.

Nothing heavy is imported here: detection reads a checkpoint's pickle without torch
(:mod:`openllm_hub_rwkv.checkpoint`); engines and converters are imported when they run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import Field

from openllm_hub.plugin import (
    Converter,
    ConverterOptions,
    ConvertRequest,
    Detection,
    DeviceSupport,
    Family,
    InvalidParameterError,
    LoadRequest,
    Model,
    OpenLLMHubError,
    Probe,
    TinyBuilder,
    hookimpl,
)
from openllm_hub_rwkv import memory
from openllm_hub_rwkv.checkpoint import PthIndex, is_torch_file, read_pth_index
from openllm_hub_rwkv.options import RwkvOptions
from openllm_hub_rwkv.spec import analyse, looks_like_rwkv
from openllm_hub_rwkv.templates import TEMPLATES
from openllm_hub_rwkv.tiny import TINY_FORMATS, TINY_OPTIONS, write_tiny

OPENLLM_HUB_API_VERSION = 1
OUTTYPES = ("auto", "f32", "f16", "bf16")


def _pth_index(probe: Probe) -> PthIndex | None:
    key = "_rwkv_pth_index"
    if key not in probe.__dict__:
        index = None
        if probe.path.is_file() and not probe.is_gguf and is_torch_file(probe.path):
            try:
                index = read_pth_index(probe.path)
                probe.examined.append(f"torch checkpoint pickle ({len(index.tensors)} tensors)")
            except OpenLLMHubError as exc:
                probe.examined.append(f"torch checkpoint pickle (unreadable: {exc.what})")
        probe.__dict__[key] = index
    return probe.__dict__[key]  # type: ignore[no-any-return]


def _detect(probe: Probe) -> Detection | None:
    index = _pth_index(probe)
    if index is not None:
        names = list(index.tensors)
        if not looks_like_rwkv(names):
            return None
        try:
            arch = analyse(index.tensors, where=probe.path, extras=index.extras)
        except OpenLLMHubError as exc:
            # RWKV-shaped but broken: claim it so that load() reports the problem by name
            return Detection("rwkv-pth", 0.6, f"RWKV-style tensor names, but {exc.what}", {"problem": exc.what})
        return Detection("rwkv-pth", 0.95, f"{arch.describe()} (tensor names and shapes)",
                         {"version": arch.version, "n_layer": arch.n_layer, "vocab_size": arch.vocab_size})
    cfg = probe.config
    if cfg is not None and cfg.get("model_type") == "rwkv":
        return Detection("hf", 0.9, "config.json model_type=rwkv (transformers RwkvForCausalLM)")
    return None


def _load(req: LoadRequest[RwkvOptions]) -> Model:
    opts = req.options
    if req.format == "hf" or opts.engine == "transformers":
        if req.format == "hf" and opts.engine == "rwkv":
            raise InvalidParameterError(
                "the rwkv package runs .pth checkpoints, not transformers folders", where=req.path,
                fix=f"use engine='transformers' (or 'auto'), or convert: openllm-hub convert {req.path} OUT.pth "
                    "--to rwkv-pth")
        from openllm_hub_rwkv.engine_hf import load_transformers

        return load_transformers(req)
    from openllm_hub_rwkv.engine_rwkv import load_rwkv

    return load_rwkv(req)


def _lazy(func: str) -> Callable[[ConvertRequest], None]:
    def run(req: ConvertRequest) -> None:
        from openllm_hub_rwkv import convert_hf as convert

        getattr(convert, func)(req)

    run.__name__ = func
    return run


#: --verify bounds (max |logit diff| over the source's logit range). Both sides run in fp32:
#: the rwkv package and transformers compute RWKV-4 with different kernels (fused sequence
#: math vs a per-token loop), measured ~1e-6 relative on the tiny models; 1e-4 leaves room
#: for long prompts. f16/bf16 outputs round every weight (bf16: 8 bits of mantissa).
_BOUNDS = {"auto": 1e-4, "f32": 1e-4, "f16": 2e-2, "bf16": 1e-1}

class PthToHfOptions(ConverterOptions):
    tokenizer: str | None = Field(None, description="auto, world, or a tokenizers JSON file")
    context_length: int | None = Field(None, ge=1, le=1 << 24, description="config's context length (default: "
                                       "from the file name, else 1024)")


FAMILY = Family(
    name="rwkv",
    memory=memory.read, published_shapes=memory.PUBLISHED,
    aliases=("raven", "chatrwkv"),
    description="RWKV-4, 5.x, 6 and 7 (ChatRWKV .pth) on the rwkv package; RWKV-4 also on transformers",
    formats=("rwkv-pth", "hf"),
    detect=_detect,
    load=_load,
    options=RwkvOptions,
    chat_templates=TEMPLATES,
    devices=(
        DeviceSupport("cuda", ("fp16", "bf16", "fp32"), formats=("rwkv-pth",), multi_gpu=True, partial_offload=True),
        DeviceSupport("cpu", ("fp32", "bf16"), formats=("rwkv-pth",)),
        DeviceSupport("cuda", ("fp16", "bf16", "fp32"), formats=("hf",)),
        DeviceSupport("cpu", ("fp32", "bf16"), formats=("hf",)),
    ),
    converters=(
        Converter("rwkv-pth", "hf", _lazy("convert_pth_to_hf"), outtypes=OUTTYPES, default_outtype="auto",
                  output_is_dir=True, verify_bounds=_BOUNDS, options=PthToHfOptions,
                  description="RWKV-4 .pth -> transformers RwkvForCausalLM folder (config.json, model.safetensors)"),
        Converter("hf", "rwkv-pth", _lazy("convert_hf_to_pth"), outtypes=OUTTYPES, default_outtype="auto",
                  verify_bounds=_BOUNDS,
                  description="transformers RwkvForCausalLM folder -> ChatRWKV .pth (RWKV-4)"),
    ),
    tiny=TinyBuilder(TINY_FORMATS, write_tiny, TINY_OPTIONS),
)


@hookimpl
def register_families(register: Callable[[Family], None]) -> None:
    register(FAMILY)


@hookimpl
def report_engines() -> dict[str, dict[str, Any]] | None:
    from importlib import metadata

    import torch

    try:
        version = metadata.version("rwkv")
    except metadata.PackageNotFoundError:
        return {"rwkv": {"installed": False}}
    return {"rwkv": {"version": version, "torch": torch.__version__, "cuda": torch.cuda.is_available(),
                     "strategies": "cpu fp32/bf16(+i8); cuda fp16/bf16/fp32(+i8), splits and streaming",
                     "versions": "RWKV-4, 5, 5.1, 5.2, 6, 7"}}
