"""LLaMA on llama.cpp: GGUF files run on the core's shared engine
(:mod:`openllm_hub.engines.llama_cpp`); an HF folder with ``engine='llama.cpp'`` is converted
once to an f16 GGUF in the cache with this plugin's converter and run from there.

A Mistral-style sliding window (``llama.attention.sliding_window``, which this plugin's
converter records) is not applied by llama.cpp to ``llama`` files: the context is chosen by
:func:`~openllm_hub_llama.checkpoint.window_context` (capped at the window by default, with a
one-line warning on the ``openllm_hub`` logger)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from openllm_hub.engines.llama_cpp import DEFAULT_MAX_CTX, LlamaCppModel, load_gguf
from openllm_hub.plugin import Family, LoadRequest, read_gguf_metadata
from openllm_hub_llama.checkpoint import window_context
from openllm_hub_llama.options import LlamaOptions

logger = logging.getLogger("openllm_hub")


def _window_options(path: str | Path, opts: LlamaOptions) -> tuple[LlamaOptions, dict[str, Any], int | None]:
    """The options to open ``path`` with (``n_ctx`` chosen for a sliding window), the window
    for ``info.extra``, and the context limit (llama.cpp rounds ``n_ctx`` up to a multiple
    of 256, which would open the context past the window again)."""
    meta = read_gguf_metadata(path)
    window = meta.get("llama.attention.sliding_window")
    train = meta.get("llama.context_length")
    train = train if isinstance(train, int) and train > 0 else DEFAULT_MAX_CTX
    if not isinstance(window, int) or isinstance(window, bool) or not 0 < window < train:
        return opts, {}, None
    n_ctx, warning = window_context(window, opts.n_ctx, min(train, DEFAULT_MAX_CTX), "llama.cpp")
    if warning is not None:
        logger.warning(warning)
    return opts.model_copy(update={"n_ctx": n_ctx}), {"sliding_window": window}, n_ctx if n_ctx <= window else None


def load_llama_gguf(req: LoadRequest[LlamaOptions]) -> LlamaCppModel:
    """A LLaMA GGUF file on llama.cpp with the request's placement and options."""
    opts, extra, limit = _window_options(req.path, req.options)
    return load_gguf(req, family="llama", options=opts, info_extra=extra, context_limit=limit)


def load_hf_via_gguf(req: LoadRequest[LlamaOptions], family: Family) -> LlamaCppModel:
    """``engine='llama.cpp'`` on an HF folder: convert it once to an f16 GGUF in the cache
    (keyed by the folder's files) with ``family``'s hf->gguf converter, then load that."""
    from openllm_hub.engines.llama_cpp_cache import cached_gguf

    out = cached_gguf(req.path, family, source_format="hf", scheme="f16")
    opts, extra, limit = _window_options(out, req.options)
    return load_gguf(LoadRequest(path=out, format="gguf", detection=req.detection, placement=req.placement,
                                 options=opts), family="llama", info_extra={"source": str(req.path), **extra},
                     context_limit=limit)


__all__ = ["load_hf_via_gguf", "load_llama_gguf"]
