"""Load options of the ``chatglm`` family (device options dtype/threads are the core's).

Its own module so the loaders read them typed (``LoadRequest[ChatGLMOptions]``) without
importing the plugin module.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, field_validator

from openllm_hub.engines.llama_cpp import LlamaCppOptions
from openllm_hub.engines.llama_cpp_quantize import QUANT_TYPES
from openllm_hub.engines.torch_batch import TorchBatchOptions

#: ``quantize`` values run by this plugin's torch engine; the llama.cpp types go through GGUF.
TORCH_QUANT = ("int8", "int4")


class ChatGLMOptions(LlamaCppOptions, TorchBatchOptions):
    """Load options of the chatglm family (device options dtype/threads are the core's).

    The llama.cpp options (n_batch, use_mmap, kv_cache_type, lora, repack; see
    :class:`LlamaCppOptions`) apply to GGUF files and to the llama.cpp ``quantize`` types;
    ``n_ctx`` is another name for ``context_length``; ``chat_template``, ``seed`` and
    ``prefix_cache_mib`` apply to both engines (the torch one keeps it off for ChatGLM-6B);
    ``batch_kv_mib`` bounds the torch engine's batched decoder.
    """

    model_config = ConfigDict(extra="forbid")

    variant: Literal["auto", "chatglm", "chatglm2", "chatglm3"] = Field(
        "auto", description="which ChatGLM; auto reads config.json (needed when it names neither v2 nor v3)")
    quantize: str | None = Field(
        None, description="int8/int4: weight-only quantization at load on the torch engine (official ChatGLM "
                          "scheme); q4_0, q8_0, q4_K_M, ... (llama.cpp's types): ChatGLM2/3 converted to GGUF "
                          "and quantized once into the cache, run on llama.cpp")
    quantize_embeddings: bool = Field(
        True, description="with int8/int4, also quantize the word embeddings and output layer per row")
    context_length: int | None = Field(None, ge=16, description="cap the context (default: the model's)")

    @field_validator("quantize")
    @classmethod
    def _known_quantize(cls, value: str | None) -> str | None:
        if value is not None and value not in TORCH_QUANT and value not in QUANT_TYPES:
            raise ValueError(f"unknown quantization {value!r}; use one of {', '.join((*TORCH_QUANT, *QUANT_TYPES))}")
        return value


__all__ = ["TORCH_QUANT", "ChatGLMOptions"]
