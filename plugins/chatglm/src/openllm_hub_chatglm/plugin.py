"""Hook implementations of the ChatGLM plugin: the ``chatglm`` family and its chat templates.

Nothing heavy is imported here: torch, sentencepiece and the networks load inside the
functions that run them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

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
    Model,
    Probe,
    Quantizer,
    QuantizeRequest,
    TinyBuilder,
    hookimpl,
)
from openllm_hub_chatglm import memory
from openllm_hub_chatglm.options import TORCH_QUANT, ChatGLMOptions
from openllm_hub_chatglm.templates import TEMPLATES
from openllm_hub_chatglm.tiny import TINY_FORMATS, TINY_OPTIONS, write_tiny

OPENLLM_HUB_API_VERSION = 1


#: ``--verify`` bounds of ``--to gguf``: max |logit diff| / the source's logit range, the GGUF
#: side on an F32 KV cache. Measured on the tiny ChatGLM2/3 models of the tests
#: (test_gguf.py): f32 2e-7 (same math in float32; llama.cpp sums in another order), f16
#: 2.6e-4 (weights rounded to 11-bit mantissas), q8_0 7e-3 (8-bit weights and, in ggml's q8_0
#: dot product, 8-bit activations); each bound leaves a few times that. Only f32 must also
#: reproduce the greedy tokens exactly.
GGUF_BOUNDS = {"f32": 1e-5, "f16": 2e-3, "q8_0": 3e-2}


def _detect(probe: Probe) -> Detection | None:
    meta = probe.gguf
    if meta is not None:
        if meta.get("general.architecture") == "chatglm":
            return Detection("gguf", 0.9, "GGUF with general.architecture=chatglm")
        return None
    cfg = probe.config
    if cfg is None:
        return None
    from openllm_hub_chatglm.spec import detect_generation

    gen = detect_generation(cfg)
    if gen is None:
        if cfg.get("model_type") == "chatglm":
            return Detection("hf", 0.6, "config.json model_type=chatglm of an unknown layout")
        return None
    what = "ChatGLM-6B" if gen == 1 else "ChatGLM2/3"
    return Detection("hf", 0.9, f"config.json model_type=chatglm with the {what} layout", {"generation": gen})


def _load(req: LoadRequest[ChatGLMOptions]) -> Model:
    opts = req.options
    if req.format == "gguf":
        from openllm_hub_chatglm.engine_gguf import load_chatglm_gguf

        return load_chatglm_gguf(req)
    if opts.quantize is not None and opts.quantize not in TORCH_QUANT:
        from openllm_hub_chatglm.engine_gguf import load_quantized_via_gguf

        return load_quantized_via_gguf(req, FAMILY)
    from openllm_hub_chatglm.engine_torch import load_chatglm

    return load_chatglm(req)


def _to_gguf(req: ConvertRequest) -> None:
    from openllm_hub_chatglm.convert_gguf import convert_hf_to_gguf

    convert_hf_to_gguf(req)


def _run_format(fmt: str, opts: BaseModel) -> str:
    """A checkpoint loaded with a llama.cpp ``quantize`` type runs as GGUF (made in the cache)."""
    q = getattr(opts, "quantize", None)
    return "gguf" if fmt == "hf" and q is not None and q not in TORCH_QUANT else fmt


def _quantize(req: QuantizeRequest) -> None:
    from openllm_hub_chatglm.quantize import quantize_checkpoint

    quantize_checkpoint(req)


class ToGgufOptions(ConverterOptions):
    variant: Literal["auto", "chatglm", "chatglm2", "chatglm3"] = Field("auto", description="which ChatGLM (default: "
                                                             "from the config and names)")


FAMILY = Family(
    name="chatglm",
    memory=memory.read, published_shapes=memory.PUBLISHED,
    aliases=("chatglm-6b", "chatglm2", "chatglm3"),
    description="ChatGLM-6B, ChatGLM2-6B, ChatGLM3-6B on an own torch engine (no remote code), INT8/INT4; "
                "ChatGLM2/3 GGUF on llama.cpp",
    formats=("hf", "gguf"),
    detect=_detect,
    load=_load,
    options=ChatGLMOptions,
    chat_templates=TEMPLATES,
    run_format=_run_format,
    devices=(
        *device_rows(("gguf",)),
        DeviceSupport("cuda", ("fp16", "bf16", "fp32"), formats=("hf",)),
        DeviceSupport("cpu", ("fp32", "bf16"), formats=("hf",)),
    ),
    converters=(
        Converter("hf", "gguf", _to_gguf, outtypes=("f32", "f16", "q8_0"), default_outtype="f16",
                  verify_bounds=GGUF_BOUNDS, exact_outtypes=("f32",), target_load_options={"kv_cache_type": "f32"},
                  options=ToGgufOptions,
                  description="ChatGLM2/3 HuggingFace folder -> GGUF for llama.cpp's chatglm architecture"),
    ),
    quantizers=(
        Quantizer("hf", TORCH_QUANT, _quantize, output_is_dir=True,
                  description="weight-only INT8/INT4 in the official ChatGLM layout (weight + weight_scale)"),
        gguf_quantizer(),
    ),
    tiny=TinyBuilder(TINY_FORMATS, write_tiny, TINY_OPTIONS),
)


@hookimpl
def register_families(register: Callable[[Family], None]) -> None:
    register(FAMILY)
