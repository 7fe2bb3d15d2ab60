"""Hook implementations of the LLaMA plugin: registers the ``llama`` family.

Nothing heavy is imported here: engines, converters and the quantizer are imported inside
the functions that run them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from openllm_hub.engines.llama_cpp import device_rows
from openllm_hub.engines.llama_cpp_quantize import gguf_quantizer
from openllm_hub.plugin import (
    Converter,
    ConverterOptions,
    ConvertRequest,
    Detection,
    DeviceSupport,
    Family,
    LoadRequest,
    LoraMerger,
    Model,
    Probe,
    QuantizeRequest,
    TinyBuilder,
    hookimpl,
)
from openllm_hub_llama import memory
from openllm_hub_llama.demo import MODEL_NAMES as DEMO_MODEL_NAMES
from openllm_hub_llama.options import LlamaOptions
from openllm_hub_llama.templates import TEMPLATES
from openllm_hub_llama.tiny import TINY_FORMATS, TINY_OPTIONS, write_tiny

OPENLLM_HUB_API_VERSION = 1

GGUF_OUTTYPES: tuple[str, ...] = ("f32", "f16", "bf16", "q8_0")
#: ``--verify`` bounds: max |logit diff| / logit range of the source on a fixed prompt, with the
#: GGUF side on an F32 KV cache. Measured on tiny random models (plugins/llama/tests,
#: test_convert_gguf.py): f32 <= 4.1e-6, f16 <= 2.8e-3, bf16 1.7e-2, q8_0 <= 8.6e-2; each bound
#: leaves about 2x headroom over the worst measurement (25x for f32, whose error is rounding
#: order only). Only f32 must also reproduce the greedy tokens exactly.
GGUF_BOUNDS = {"f32": 1e-4, "f16": 1e-2, "bf16": 5e-2, "q8_0": 0.15}
#: meta <-> hf keeps values (auto, f32) or rounds them once (f16, bf16: half-precision steps).
META_HF_BOUNDS = {"auto": 1e-6, "f32": 1e-6, "f16": 1e-2, "bf16": 5e-2}


def _detect(probe: Probe) -> Detection | None:
    meta = probe.gguf
    if meta is not None:
        arch = meta.get("general.architecture")
        if arch == "llama" and meta.get("general.type", "model") == "model":
            return Detection("gguf", 0.95, "GGUF with general.architecture=llama")
        return None
    cfg = probe.config
    if cfg is not None:
        archs = cfg.get("architectures") or []
        if cfg.get("model_type") == "llama" or "LlamaForCausalLM" in archs:
            return Detection("hf", 0.9, "config.json model_type=llama")
        if cfg.get("model_type") == "mistral" or "MistralForCausalLM" in archs:
            return Detection("hf", 0.9, "config.json model_type=mistral (a LLaMA with a sliding window)")
        return None
    params = probe.json("params.json")
    if params is not None and any(f.startswith("consolidated.") and f.endswith(".pth") for f in probe.files):
        return Detection("meta", 0.9, "params.json with consolidated.NN.pth shards")
    return None


def _load(req: LoadRequest[LlamaOptions]) -> Model:
    opts = req.options
    if req.format == "meta":
        if not opts.convert:
            # converting writes a full HF copy (13 GB for a 7B model) into the cache: only when asked
            from openllm_hub.plugin import InvalidParameterError

            raise InvalidParameterError("a Meta checkpoint runs only after conversion to an HF folder",
                                        where=req.path, fix=_meta_hint(req.path, req.format))
        from openllm_hub_llama.convert_meta import meta_to_hf_cached

        hf_dir = meta_to_hf_cached(req.path)
        req = LoadRequest(path=hf_dir, format="hf", detection=req.detection, placement=req.placement, options=opts)
    if req.format == "gguf":
        if opts.engine == "transformers":
            from openllm_hub.plugin import InvalidParameterError

            raise InvalidParameterError("GGUF files run on llama.cpp only", where=req.path,
                                        fix="use engine='llama.cpp' (or 'auto'), or load the HF checkpoint")
        from openllm_hub_llama.engine_gguf import load_llama_gguf

        return load_llama_gguf(req)
    if opts.engine == "llama.cpp":
        from openllm_hub_llama.engine_gguf import load_hf_via_gguf

        return load_hf_via_gguf(req, FAMILY)
    from openllm_hub_llama.engine_hf import load_hf

    return load_hf(req)


def _run_format(fmt: str, opts: BaseModel) -> str:
    """HF and Meta checkpoints loaded with engine='llama.cpp' run as GGUF (converted in the cache)."""
    return "gguf" if fmt in ("hf", "meta") and getattr(opts, "engine", "auto") == "llama.cpp" else fmt


def _meta_hint(path: Path, fmt: str) -> str:
    return (f"pass convert=True to load() or -o convert=true to the CLI (writes an HF copy into the cache), or run "
            f"`openllm-hub convert {path} OUT --to hf` (or --to gguf after that)")


def _lazy(module: str, func: str) -> Callable[..., None]:
    def run(req: ConvertRequest | QuantizeRequest) -> None:
        import importlib

        getattr(importlib.import_module(f"openllm_hub_llama.{module}"), func)(req)

    run.__name__ = func
    return run


class MetaToHfOptions(ConverterOptions):
    """Options of meta -> hf (and of meta -> gguf, which goes through an HF folder)."""

    context_length: int | None = Field(None, ge=1, le=1 << 24, description="config's max_position_embeddings "
                                       "(default 2048 for LLaMA-1, 4096 for Llama-2)")
    max_shard_size: int | None = Field(None, ge=1, description="bytes per safetensors shard")


class HfToMetaOptions(ConverterOptions):
    shards: int | None = Field(None, ge=1, le=1024, description="consolidated.NN.pth files (default: Meta's "
                               "count for the size)")


class ToGgufOptions(ConverterOptions):
    name: str | None = Field(None, max_length=1000, description="general.name written into the GGUF")


class MetaToGgufOptions(MetaToHfOptions, ToGgufOptions):
    pass


FAMILY = Family(
    name="llama",
    memory=memory.read, published_shapes=memory.PUBLISHED,
    aliases=("alpaca", "vicuna", "llama2", "chinese-llama", "belle"),
    description="LLaMA 1/2 and fine-tunes: GGUF on llama.cpp, HF folders on transformers, Meta .pth shards",
    formats=("gguf", "hf", "meta"),
    loadable=("gguf", "hf", "meta"),
    detect=_detect,
    load=_load,
    options=LlamaOptions,
    chat_templates=TEMPLATES,
    not_loadable_hint=_meta_hint,
    run_format=_run_format,
    devices=(
        *device_rows(("gguf",)),
        DeviceSupport("cuda", ("fp16", "bf16", "fp32"), formats=("hf", "meta"), multi_gpu=True),
        DeviceSupport("cpu", ("fp32", "bf16"), formats=("hf", "meta")),
    ),
    converters=(
        Converter("meta", "hf", _lazy("convert_meta", "convert_meta_to_hf"), output_is_dir=True,
                  outtypes=("f32", "f16", "bf16", "auto"), default_outtype="auto",
                  verify_bounds=META_HF_BOUNDS, exact_outtypes=("auto", "f32"),
                  source_load_options={"convert": True}, options=MetaToHfOptions,
                  description="Meta consolidated.NN.pth shards -> HuggingFace folder (sharded safetensors)"),
        Converter("hf", "meta", _lazy("convert_meta", "convert_hf_to_meta"), output_is_dir=True,
                  outtypes=("auto",), default_outtype="auto", verify_bounds={"auto": 1e-6},
                  exact_outtypes=("auto",),
                  target_load_options={"convert": True}, options=HfToMetaOptions,
                  description="HuggingFace folder -> Meta layout (params.json, consolidated.NN.pth); "
                              "-o shards=N, default Meta's count for the size (7B 1, 13B 2, 30B 4, 65B/70B 8)"),
        Converter("hf", "gguf", _lazy("convert_gguf", "convert_hf_to_gguf"), outtypes=GGUF_OUTTYPES,
                  default_outtype="f16", verify_bounds=GGUF_BOUNDS, exact_outtypes=("f32",),
                  target_load_options={"kv_cache_type": "f32"}, options=ToGgufOptions,
                  description="HuggingFace folder -> GGUF (f32, f16, bf16, q8_0) with tokenizer"),
        Converter("meta", "gguf", _lazy("convert_gguf", "convert_meta_to_gguf"), outtypes=GGUF_OUTTYPES,
                  default_outtype="f16", source_load_options={"convert": True},
                  verify_bounds=GGUF_BOUNDS, exact_outtypes=("f32",),
                  target_load_options={"kv_cache_type": "f32"}, options=MetaToGgufOptions,
                  description="Meta shards -> GGUF (through an HF folder in a temporary directory)"),
    ),
    quantizers=(gguf_quantizer(),),
    lora_merger=LoraMerger(("hf", "meta"), ("hf", "pth"), _lazy("lora_merge", "run_merge"),
                           description="PEFT LoRA adapters (in order; extended vocabularies) -> HF folder or "
                                       "Meta consolidated.NN.pth"),
    model_names=DEMO_MODEL_NAMES,
    tiny=TinyBuilder(TINY_FORMATS, write_tiny, TINY_OPTIONS),
)


@hookimpl
def register_families(register: Callable[[Family], None]) -> None:
    register(FAMILY)


@hookimpl
def register_commands(cli: Any) -> None:
    """``openllm-hub lora train`` and ``openllm-hub lora gguf`` (see :mod:`openllm_hub_llama.commands`)."""
    from openllm_hub_llama.commands import add_lora_commands

    add_lora_commands(cli)


@hookimpl
def report_engines() -> dict[str, dict[str, Any]] | None:
    """What ``openllm-hub devices`` shows about llama.cpp and transformers/torch here."""
    from importlib import metadata

    from openllm_hub.engines.llama_cpp import capabilities

    report: dict[str, dict[str, Any]] = {"llama.cpp": capabilities()}
    hf: dict[str, Any] = {}
    for dist in ("transformers", "torch"):
        try:
            hf[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            hf[dist] = None
    if hf["torch"] is not None:
        import torch

        hf["cuda"] = bool(torch.cuda.is_available())
        hf["cuda_version"] = torch.version.cuda
    report["transformers"] = {"version": hf["transformers"], "torch": hf["torch"], "cuda": hf.get("cuda", False),
                              "cuda_version": hf.get("cuda_version")}
    return report
