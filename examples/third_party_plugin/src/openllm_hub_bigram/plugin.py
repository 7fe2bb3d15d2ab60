"""Hook implementations: one family, one built-in model name. This is all a plugin needs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from openllm_hub.plugin import (
    Detection,
    DeviceSupport,
    Family,
    LoadRequest,
    Model,
    ModelName,
    Probe,
    TinyBuilder,
    hookimpl,
)
from openllm_hub_bigram import memory
from openllm_hub_bigram.tiny import TINY_FORMATS, TINY_OPTIONS, write_tiny

OPENLLM_HUB_API_VERSION = 1


def detect(probe: Probe) -> Detection | None:
    if not probe.path.is_file() or probe.head[:8] == b"":
        return None
    from openllm_hub.plugin import CorruptFileError, read_safetensors_header

    try:
        meta = read_safetensors_header(probe.path).get("__metadata__", {})
    except CorruptFileError:
        return None
    if meta.get("format") == "openllm-hub-bigram":
        return Detection("bigram", 1.0, "safetensors with format=openllm-hub-bigram")
    return None


def load(req: LoadRequest) -> Model:
    from openllm_hub_bigram.engine_numpy import BigramModel

    return BigramModel(req.path, device=str(req.placement))


def _builtin() -> Path:
    from openllm_hub_bigram import BUILTIN_MODEL

    return BUILTIN_MODEL


@hookimpl
def register_families(register: Callable[[Family], None]) -> None:
    register(Family(
        name="bigram",
        memory=memory.read,
        formats=("bigram",),
        detect=detect,
        load=load,
        devices=(DeviceSupport("cpu", ("fp32",)),),
        description="Example plugin: byte-level bigram language model (numpy)",
        model_names=(ModelName("bigram-stories", "bigram model trained on generated stories",
                               resolve=_builtin),),
        tiny=TinyBuilder(TINY_FORMATS, write_tiny, TINY_OPTIONS),
    ))
