"""The public plugin API: everything a plugin author imports, and nothing else.

A plugin (in-tree or third-party) imports from here and from the shared engines in
:mod:`openllm_hub.engines`; never from ``openllm_hub.core.*``, whose layout may change
between releases while this module keeps its names (``API_VERSION`` says which contract)::

    from openllm_hub.plugin import Detection, Family, LoadRequest, Model, Probe, hookimpl

    OPENLLM_HUB_API_VERSION = API_VERSION

    @hookimpl
    def register_families(register):
        register(Family(name="mything", formats=("mything",), detect=..., load=..., devices=...))

The hooks themselves are documented in :mod:`openllm_hub.core.hookspecs` (parameters, return
value, when the core calls them). The conformance kit (:class:`ModelConformance`) is exported
lazily, because it is for test modules only.

Importing this module is light: no engine (torch, transformers, llama_cpp) is imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from openllm_hub.api import detect
from openllm_hub.cli_args import (
    add_device_arguments,
    add_generation_arguments,
    add_hidden_alias,
    add_load_arguments,
    generation_params,
    load_from_args,
)
from openllm_hub.core.batch import BatchDecoder, StepResult
from openllm_hub.core.chat import ChatTemplate, Cut, Message, Piece, Special, Text, get_template
from openllm_hub.core.config import GenerationConfig
from openllm_hub.core.convert import Converter, ConverterOptions, ConvertRequest, VerifyReport, verify_models
from openllm_hub.core.detect import Probe, read_gguf_metadata
from openllm_hub.core.detok import join_pieces
from openllm_hub.core.device import DeviceSupport, Placement, probe_machine
from openllm_hub.core.family import (
    Detection,
    Family,
    LaunchRequest,
    LoadRequest,
    ModelName,
    NoOptions,
    TinyBuilder,
)
from openllm_hub.core.generate import generate_tokens
from openllm_hub.core.hookspecs import hookimpl
from openllm_hub.core.io import (
    TMP_MARK,
    atomic_output,
    check_destination,
    file_sha256,
    load_torch_checkpoint,
    parse_config,
    read_json,
    read_safetensors_header,
    read_text_file,
    scratch_dir,
    write_json,
)
from openllm_hub.core.logprobs import ScoredToken, TokenLogprob, TopLogprob, score
from openllm_hub.core.lora import LoraMerger, MergeRequest
from openllm_hub.core.model import Chunk, Completion, Model, ModelInfo, Timings, Usage
from openllm_hub.core.paths import cache_dir
from openllm_hub.core.plan import ModelSpec, available_ram, bits_from_file_size, estimate, gguf_dims, stored_as
from openllm_hub.core.progress import Progress, progress_enabled, track
from openllm_hub.core.quantize import Quantizer, QuantizeRequest
from openllm_hub.core.registry import API_VERSION
from openllm_hub.core.sampling import Sampler
from openllm_hub.core.tiny import choice_option, int_option
from openllm_hub.core.tool_calls import tool_call_code
from openllm_hub.errors import (
    ConversionError,
    CorruptFileError,
    DestinationExistsError,
    IncompatibleDeviceError,
    InvalidParameterError,
    ModelClosedError,
    NotFoundError,
    OpenLLMHubError,
    PluginError,
    UnknownFormatError,
    UnsafeCheckpointError,
)

if TYPE_CHECKING:  # pragma: no cover
    from openllm_hub.testing import ModelConformance

__all__ = [
    "API_VERSION",
    "TMP_MARK",
    "BatchDecoder",
    "ChatTemplate",
    "Chunk",
    "Completion",
    "ConversionError",
    "ConvertRequest",
    "Converter",
    "ConverterOptions",
    "CorruptFileError",
    "Cut",
    "DestinationExistsError",
    "Detection",
    "DeviceSupport",
    "Family",
    "GenerationConfig",
    "IncompatibleDeviceError",
    "InvalidParameterError",
    "LaunchRequest",
    "LoadRequest",
    "LoraMerger",
    "MergeRequest",
    "Message",
    "Model",
    "ModelClosedError",
    "ModelConformance",
    "ModelInfo",
    "ModelName",
    "ModelSpec",
    "NoOptions",
    "NotFoundError",
    "OpenLLMHubError",
    "Piece",
    "Placement",
    "PluginError",
    "Probe",
    "Progress",
    "QuantizeRequest",
    "Quantizer",
    "Sampler",
    "ScoredToken",
    "Special",
    "StepResult",
    "Text",
    "Timings",
    "TinyBuilder",
    "TokenLogprob",
    "TopLogprob",
    "UnknownFormatError",
    "UnsafeCheckpointError",
    "Usage",
    "VerifyReport",
    "add_device_arguments",
    "add_generation_arguments",
    "add_hidden_alias",
    "add_load_arguments",
    "atomic_output",
    "available_ram",
    "bits_from_file_size",
    "cache_dir",
    "check_destination",
    "choice_option",
    "detect",
    "estimate",
    "file_sha256",
    "generate_tokens",
    "generation_params",
    "get_template",
    "gguf_dims",
    "hookimpl",
    "int_option",
    "join_pieces",
    "load_from_args",
    "load_torch_checkpoint",
    "parse_config",
    "probe_machine",
    "progress_enabled",
    "read_gguf_metadata",
    "read_json",
    "read_safetensors_header",
    "read_text_file",
    "score",
    "scratch_dir",
    "stored_as",
    "tool_call_code",
    "track",
    "verify_models",
    "write_json",
]


def __getattr__(name: str) -> Any:
    """Lazy exports: the conformance kit is for test modules only."""
    if name == "ModelConformance":
        from openllm_hub.testing import ModelConformance

        return ModelConformance
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
