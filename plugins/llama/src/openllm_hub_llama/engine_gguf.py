"""LLaMA on llama.cpp: GGUF files run on the core's shared engine
(:mod:`openllm_hub.engines.llama_cpp`); an HF folder with ``engine='llama.cpp'`` is converted
once to an f16 GGUF in the cache with this plugin's converter and run from there."""

from __future__ import annotations

from openllm_hub.engines.llama_cpp import LlamaCppModel, load_gguf
from openllm_hub.plugin import Family, LoadRequest
from openllm_hub_llama.options import LlamaOptions


def load_llama_gguf(req: LoadRequest[LlamaOptions]) -> LlamaCppModel:
    """A LLaMA GGUF file on llama.cpp with the request's placement and options."""
    return load_gguf(req, family="llama")


def load_hf_via_gguf(req: LoadRequest[LlamaOptions], family: Family) -> LlamaCppModel:
    """``engine='llama.cpp'`` on an HF folder: convert it once to an f16 GGUF in the cache
    (keyed by the folder's files) with ``family``'s hf->gguf converter, then load that."""
    from openllm_hub.engines.llama_cpp_cache import cached_gguf

    out = cached_gguf(req.path, family, source_format="hf", scheme="f16")
    return load_gguf(LoadRequest(path=out, format="gguf", detection=req.detection, placement=req.placement,
                                 options=req.options), family="llama", info_extra={"source": str(req.path)})


__all__ = ["load_hf_via_gguf", "load_llama_gguf"]
