"""Hook implementations of the ChatGLM plugin: the ``chatglm`` family and its chat templates.

Nothing heavy is imported here: torch, sentencepiece and the networks load inside the
functions that run them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from openllm_hub import hookimpl
from openllm_hub.core.chat import ChatTemplate
from openllm_hub.core.convert import Converter, ConvertRequest
from openllm_hub.core.detect import Probe
from openllm_hub.core.device import DeviceSupport
from openllm_hub.core.family import Detection, Family, LoadRequest
from openllm_hub.core.model import Model
from openllm_hub.core.quantize import Quantizer, QuantizeRequest

OPENLLM_HUB_API_VERSION = 1


class ChatGLMOptions(BaseModel):
    """Load options of the chatglm family (device options dtype/threads are the core's)."""

    model_config = ConfigDict(extra="forbid")

    variant: Literal["auto", "chatglm", "chatglm2", "chatglm3"] = Field(
        "auto", description="which ChatGLM; auto reads config.json (needed when it names neither v2 nor v3)")
    quantize: Literal["int8", "int4"] | None = Field(
        None, description="weight-only quantization of the layer linears at load (official ChatGLM scheme)")
    quantize_embeddings: bool = Field(
        True, description="with quantization, also quantize the word embeddings and output layer per row")
    context_length: int | None = Field(None, ge=16, description="cap the context (default: the model's)")
    chat_template: str | None = Field(None, description="default chat template (default: the variant's own)")


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


def _load(req: LoadRequest) -> Model:
    from openllm_hub_chatglm.engine import load_chatglm

    return load_chatglm(req)


def _to_gguf(req: ConvertRequest) -> None:
    from openllm_hub_chatglm.gguf_convert import convert_hf_to_gguf

    convert_hf_to_gguf(req)


def _gguf_hint(path: Path, fmt: str) -> str:
    return ("running ChatGLM GGUF files needs the shared llama.cpp engine, which is not in openllm_hub's core "
            f"yet; load the HuggingFace checkpoint it came from instead (torch engine), or run {path.name} with "
            "llama.cpp directly")


def _quantize(req: QuantizeRequest) -> None:
    from openllm_hub_chatglm.save import quantize_checkpoint

    quantize_checkpoint(req)


FAMILY = Family(
    name="chatglm",
    aliases=("chatglm-6b", "chatglm2", "chatglm3"),
    description="ChatGLM-6B, ChatGLM2-6B, ChatGLM3-6B on an own torch engine (no remote code); INT8/INT4",
    formats=("hf", "gguf"),
    loadable=("hf",),
    detect=_detect,
    load=_load,
    options=ChatGLMOptions,
    not_loadable_hint=_gguf_hint,
    devices=(
        DeviceSupport("cuda", ("fp16", "bf16", "fp32")),
        DeviceSupport("cpu", ("fp32", "bf16")),
    ),
    converters=(
        Converter("hf", "gguf", _to_gguf, outtypes=("f32", "f16", "q8_0"), default_outtype="f16",
                  description="ChatGLM2/3 HuggingFace folder -> GGUF for llama.cpp's chatglm architecture"),
    ),
    quantizers=(
        Quantizer("hf", ("int8", "int4"), _quantize, output_is_dir=True,
                  description="weight-only INT8/INT4 in the official ChatGLM layout (weight + weight_scale)"),
    ),
)


@hookimpl
def register_families(register: Callable[[Family], None]) -> None:
    register(FAMILY)


@hookimpl
def register_chat_templates(register: Callable[[ChatTemplate], None]) -> None:
    from openllm_hub_chatglm.chat import TEMPLATES

    for tpl in TEMPLATES:
        register(tpl)
