"""Load options of the ``llama`` family (device options dtype/gpu_layers/threads are the core's).

Its own module so the loaders read them typed (``LoadRequest[LlamaOptions]``) without
importing the plugin module.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from openllm_hub.engines.llama_cpp import LlamaCppOptions
from openllm_hub.engines.torch_batch import TorchBatchOptions


class LlamaOptions(LlamaCppOptions, TorchBatchOptions):
    """Load options of the llama family: llama.cpp's (n_ctx, n_batch, use_mmap, kv_cache_type,
    lora, chat_template, repack, seed, prefix_cache_mib; see :class:`LlamaCppOptions`; the
    transformers engine uses chat_template, seed and prefix_cache_mib), the torch batched
    decoder's ``batch_kv_mib``, the engine choice and Meta conversion (device options
    dtype/gpu_layers/threads are the core's)."""

    model_config = ConfigDict(extra="forbid")

    engine: Literal["auto", "llama.cpp", "transformers"] = Field(
        "auto", description="auto: llama.cpp for GGUF files, transformers for HF folders")
    convert: bool = Field(False, description="Meta checkpoints: convert to HF in the cache and load that")


__all__ = ["LlamaOptions"]
